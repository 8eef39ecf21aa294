"""Reading and writing video files with PyAV, whole or block by block.

    frames, fps = read_video("in.mp4", max_frames=68, size=(256, 256))   # (T, H, W, 3) uint8
    write_video("out.mp4", frames, fps)

Writes go to a temporary file next to the target, renamed when complete, so an interrupted
write never leaves a half-written video under the target name.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import tempfile
from typing import Iterator

import av
import numpy as np

from bootvae_jax.cli import UserError

# One interpolation for every frame resize (decoded video and arrays alike). swscale's bilinear
# widens its filter when downscaling, so it does not alias.
SWSCALE_INTERPOLATION = "BILINEAR"

# H.264 when this FFmpeg build has it, else MPEG-4 part 2 (always built in).
PREFERRED_CODECS = ("libx264", "mpeg4")


# Pixel conventions: uint8 [0, 255] in files, float32 [-1, 1] in models.


def to_unit_range(frames):
  """uint8 [0, 255] -> float32 [-1, 1]; numpy or jax arrays of any shape.

  The clip keeps the range exact where a compiler turns the division into a multiplication
  by a rounded reciprocal (XLA on CPU gives 1.0000001 for 255 without it).
  """
  return ((frames.astype(np.float32) - 127.5) / 127.5).clip(-1.0, 1.0)


def to_uint8(video: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (rounded, clipped); inverse of `to_unit_range`."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What the container says: frame rate, frame size, frame count (0 if not stored)."""

  fps: float
  height: int
  width: int
  num_frames: int


def _open(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no video file at {path}")
  try:
    container = av.open(path)
  except av.FFmpegError as error:
    raise UserError(f"{path} is not a readable video ({error})") from error
  if not container.streams.video:
    container.close()
    raise UserError(f"{path} has no video stream")
  return container


def video_info(path: str) -> VideoInfo:
  with _open(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(
        fps=float(rate) if rate else 0.0,
        height=stream.codec_context.height,
        width=stream.codec_context.width,
        num_frames=int(stream.frames or 0),
    )


def iter_video(
    path: str,
    *,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    block_frames: int = 16,
) -> Iterator[np.ndarray]:
  """Decodes a video in blocks of up to `block_frames` frames.

  Args:
    path: a video file.
    max_frames: stop after this many frames (None: all).
    size: (height, width) to scale every frame to (swscale, as the training data); None keeps
      the file's size.
    block_frames: frames per yielded block.

  Yields:
    (t, H, W, 3) uint8 RGB blocks, t ≤ block_frames.
  """
  if max_frames is not None and max_frames < 1:
    raise UserError(f"max_frames={max_frames} must be at least 1")
  block, count = [], 0
  with _open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
      height, width = size or (frame.height, frame.width)
      block.append(
          frame.reformat(
              width=width,
              height=height,
              format="rgb24",
              interpolation=SWSCALE_INTERPOLATION,
          ).to_ndarray()
      )
      count += 1
      if len(block) == block_frames:
        yield np.stack(block)
        block = []
      if max_frames is not None and count >= max_frames:
        break
  if block:
    yield np.stack(block)
  if count == 0:
    raise ValueError(f"{path}: no frame decoded")


def read_video(
    path: str, max_frames: int | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, float]:
  """The frames of a video file and its frame rate.

  Args:
    path: a video file PyAV can open.
    max_frames: read at most this many frames from the start (None: all).
    size: (height, width) to scale frames to; None keeps the file's size.

  Returns:
    (frames (T, H, W, 3) uint8 RGB, frames per second).
  """
  fps = video_info(path).fps
  return np.concatenate(list(iter_video(path, max_frames=max_frames, size=size))), fps


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def pick_codec() -> str:
  return next(c for c in PREFERRED_CODECS if c in av.codecs_available)


class VideoWriter:
  """Writes uint8 RGB frames block by block; the file appears under `path` only when closed
  without error.

      with VideoWriter("out.mp4", fps=24) as writer:
        for block in blocks:
          writer.write(block)            # (t, H, W, 3) uint8
  """

  def __init__(
      self,
      path: str,
      fps: float,
      *,
      codec: str | None = None,
      crf: int = 17,
      pix_fmt: str = "yuv420p",
  ):
    self.path = os.path.abspath(path)
    self.fps = fps
    self.codec = codec or pick_codec()
    self.crf = crf
    self.pix_fmt = pix_fmt
    self.num_frames = 0
    directory = os.path.dirname(self.path)
    os.makedirs(directory, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(self.path))
    # Same directory (an atomic rename) and same extension (the container format follows it).
    fd, self.tmp_path = tempfile.mkstemp(prefix=f".{stem}.", suffix=ext or ".mp4", dir=directory)
    os.close(fd)
    self.container = av.open(self.tmp_path, mode="w")
    self.stream = None

  def _add_stream(self, height: int, width: int) -> None:
    if self.pix_fmt == "yuv420p" and (height % 2 or width % 2):
      raise ValueError(f"frame size {height}x{width}: yuv420p video needs even height and width")
    rate = fractions.Fraction(self.fps).limit_denominator(1001) if self.fps > 0 else 25
    options = {"crf": str(self.crf)} if self.codec == "libx264" else {}
    self.stream = self.container.add_stream(self.codec, rate=rate, options=options)
    self.stream.height, self.stream.width = height, width
    self.stream.pix_fmt = self.pix_fmt
    if self.codec != "libx264":  # no CRF: ask for a generous bit rate (~1.5 bits per pixel)
      self.stream.bit_rate = int(1.5 * height * width * float(rate))

  def write(self, frames: np.ndarray) -> None:
    """frames: (t, H, W, 3) uint8 RGB, the same H, W for the whole video."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if self.stream is None:
      self._add_stream(*frames.shape[1:3])
    elif frames.shape[1:3] != (self.stream.height, self.stream.width):
      raise ValueError(
          f"frame size {frames.shape[1:3]} differs from the video's"
          f" {(self.stream.height, self.stream.width)}"
      )
    for frame in frames:
      self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    self.num_frames += len(frames)

  def close(self) -> str:
    """Flushes the encoder and moves the file into place; returns its path."""
    if self.stream is None:
      self.abort()
      raise ValueError(f"{self.path}: no frames were written")
    try:
      self.container.mux(self.stream.encode())  # flush delayed (B-)frames
      self.container.close()
      os.chmod(self.tmp_path, 0o666 & ~_umask())  # mkstemp made it private; not wanted here
      os.replace(self.tmp_path, self.path)
    except BaseException:
      self.abort()  # no temporary file left behind
      raise
    return self.path

  def abort(self) -> None:
    """Drops the partial file."""
    try:
      self.container.close()
    except Exception:  # pylint: disable=broad-except  # closing a broken encoder may fail too
      pass
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_video(
    path: str,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str | None = None,
    crf: int = 17,
    pix_fmt: str = "yuv420p",
) -> str:
  """Writes (T, H, W, 3) uint8 RGB frames (H, W even) as an H.264 (or MPEG-4) video.

  Args:
    path: target file; its extension picks the container (.mp4, .mkv, .mov, .avi).
    frames: (T, H, W, 3) uint8.
    fps: frames per second.
    codec: override the codec (default: libx264 if available, else mpeg4).
    crf: libx264 constant rate factor (lower is better quality; 17 is visually lossless, 0 with
      pix_fmt 'yuv444p' is lossless).
    pix_fmt: the stream's pixel format.

  Returns:
    The absolute path written.
  """
  with VideoWriter(path, fps, codec=codec, crf=crf, pix_fmt=pix_fmt) as writer:
    writer.write(frames)
  return writer.path
