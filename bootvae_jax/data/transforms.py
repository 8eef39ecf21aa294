"""Clip sampling and per-clip transforms: frame indices, resize, crop, flip, [-1, 1].

A clip is `num_frames` frames taken `stride` frames apart from one video. The steps, in
order, are:

1. `sample_frame_indices`: pick a stride (fixed, or uniform in [min, max] among the strides
   that fit the video) and a start frame.
2. `resized_size` / `resize_frames`: scale so the short side is `resize_short_side`
   (aspect kept). With `resize_short_side=0` frames keep their size, except that a frame
   smaller than the crop is scaled up just enough for the crop to fit.
3. `crop_and_flip`: a random (training) or centre (evaluation) crop of `crop_size`, then an
   optional horizontal flip. The same crop and flip apply to every frame of a clip.
4. `to_unit_range`: uint8 -> float32 in [-1, 1]. The pipeline applies it last, on device,
   so worker processes and the host->device copy move uint8 (4x fewer bytes).

Random draws come from one `np.random.Generator` per clip, always in the same order (stride,
start, crop top, crop left, flip), so a clip is a pure function of (source, index, rng seed).
This module is numpy + PyAV only: it runs inside grain worker processes, which should not
have to import JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import av
import numpy as np

from bootvae_jax.core.video_io import SWSCALE_INTERPOLATION

# The pixel conventions live with the video files; the pipeline's callers find them here too.
from bootvae_jax.core.video_io import to_uint8  # pylint: disable=unused-import
from bootvae_jax.core.video_io import to_unit_range  # pylint: disable=unused-import


class ClipTooShortError(ValueError):
  """A video has fewer frames than the clip needs."""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What one training clip looks like.

  Attributes:
    num_frames: frames per clip, T.
    min_stride: smallest frame stride.
    max_stride: largest frame stride (== min_stride for a fixed stride).
    resize_short_side: target short side in pixels; 0 keeps the decoded size.
    crop_size: (height, width) of the output clip.
    random_crop: random crop position if True, centre crop otherwise.
    random_flip: flip each clip horizontally with probability 1/2.
  """

  num_frames: int
  min_stride: int
  max_stride: int
  resize_short_side: int
  crop_size: tuple[int, int]
  random_crop: bool
  random_flip: bool

  @classmethod
  def from_config(cls, source_config: Any) -> ClipSpec:
    """Builds the spec from a (resolved, per-source) `config.data`-like mapping."""
    min_stride, max_stride = stride_range(source_config["frame_stride"])
    crop_height, crop_width = source_config["crop_size"]
    return cls(
        num_frames=int(source_config["num_frames"]),
        min_stride=min_stride,
        max_stride=max_stride,
        resize_short_side=int(source_config["resize_short_side"]),
        crop_size=(int(crop_height), int(crop_width)),
        random_crop=bool(source_config["random_crop"]),
        random_flip=bool(source_config["random_flip"]),
    )

  @property
  def min_span(self) -> int:
    """Frames a video needs for one clip at the smallest stride."""
    return 1 + (self.num_frames - 1) * self.min_stride

  def for_eval(self) -> ClipSpec:
    """Deterministic variant: smallest stride, centre crop, no flip."""
    return dataclasses.replace(
        self, max_stride=self.min_stride, random_crop=False, random_flip=False
    )


def stride_range(frame_stride: Any) -> tuple[int, int]:
  """`frame_stride` config value (int or (min, max)) -> (min, max)."""
  if isinstance(frame_stride, (int, np.integer)):
    return int(frame_stride), int(frame_stride)
  low, high = frame_stride
  return int(low), int(high)


def sample_frame_indices(
    num_available: int,
    spec: ClipSpec,
    rng: np.random.Generator | None,
    *,
    position: float = 0.5,
) -> np.ndarray:
  """Picks the frames of one clip.

  Args:
    num_available: frames in the video.
    spec: clip spec.
    rng: random stride and start if given; otherwise the smallest stride and a start at
      `position` of the valid range (0: first frame, 0.5: centred, 1: ends on the last frame).
    position: where a deterministic clip sits, in [0, 1].

  Returns:
    (T,) int64 frame indices, strictly increasing when T > 1.

  Raises:
    ClipTooShortError: the video has fewer than `spec.min_span` frames.
  """
  if num_available < spec.min_span:
    raise ClipTooShortError(
        f"video has {num_available} frames; a clip of {spec.num_frames} frames at stride "
        f"{spec.min_stride} needs {spec.min_span}"
    )
  if rng is None:
    stride = spec.min_stride
  else:
    # The largest stride whose clip still fits; strides above it are not offered.
    fitting = (num_available - 1) // max(spec.num_frames - 1, 1)
    stride = int(rng.integers(spec.min_stride, min(spec.max_stride, fitting) + 1))
  span = 1 + (spec.num_frames - 1) * stride
  last_start = num_available - span
  if rng is None:
    start = int(round(min(max(position, 0.0), 1.0) * last_start))
  else:
    start = int(rng.integers(0, last_start + 1))
  return start + stride * np.arange(spec.num_frames, dtype=np.int64)


def resized_size(height: int, width: int, spec: ClipSpec) -> tuple[int, int]:
  """Size (height, width) a (height, width) frame is resized to before cropping."""
  if spec.resize_short_side > 0:
    scale = spec.resize_short_side / min(height, width)
  else:
    scale = 1.0
  crop_height, crop_width = spec.crop_size
  # A frame smaller than the crop is scaled up just enough for the crop to fit.
  scale = max(scale, crop_height / height, crop_width / width)
  if scale == 1.0:
    return height, width
  return (max(crop_height, round(height * scale)), max(crop_width, round(width * scale)))


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes frames with FFmpeg's swscale (area-averaging bilinear), as video decoding does.

  Args:
    frames: (T, H, W, 3) uint8.
    size: (height, width) wanted.

  Returns:
    (T, height, width, 3) uint8; `frames` itself when the size already matches.
  """
  height, width = size
  if frames.shape[1:3] == (height, width):
    return frames
  resized = np.empty((frames.shape[0], height, width, 3), np.uint8)
  for t, frame in enumerate(frames):
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    resized[t] = video_frame.reformat(
        width=width, height=height, interpolation=SWSCALE_INTERPOLATION
    ).to_ndarray()
  return resized


def crop_offsets(
    height: int,
    width: int,
    crop_size: tuple[int, int],
    rng: np.random.Generator | None,
) -> tuple[int, int]:
  """(top, left) of a crop: uniform if `rng` is given, centred otherwise."""
  crop_height, crop_width = crop_size
  if height < crop_height or width < crop_width:
    raise ValueError(f"frame {height}x{width} is smaller than the crop {crop_height}x{crop_width}")
  if rng is None:
    return (height - crop_height) // 2, (width - crop_width) // 2
  top = int(rng.integers(0, height - crop_height + 1))
  left = int(rng.integers(0, width - crop_width + 1))
  return top, left


def crop_and_flip(
    frames: np.ndarray,
    spec: ClipSpec,
    rng: np.random.Generator | None,
) -> np.ndarray:
  """Crops every frame at the same place and maybe flips the clip left-right.

  Args:
    frames: (T, H, W, C) with H, W at least `spec.crop_size`.
    spec: clip spec; its random_crop / random_flip only act when `rng` is given.
    rng: per-clip generator, or None for a deterministic centre crop without flip.

  Returns:
    (T, crop_height, crop_width, C), contiguous.
  """
  crop_height, crop_width = spec.crop_size
  top, left = crop_offsets(
      frames.shape[1], frames.shape[2], spec.crop_size, rng if spec.random_crop else None
  )
  clip = frames[:, top : top + crop_height, left : left + crop_width]
  if spec.random_flip and rng is not None and rng.random() < 0.5:
    clip = clip[:, :, ::-1]
  return np.ascontiguousarray(clip)


def spread_positions(num_positions: int) -> np.ndarray:
  """(num_positions,) positions in [0, 1] centred in equal slices, for evaluation clips."""
  return (np.arange(num_positions) + 0.5) / max(num_positions, 1)
