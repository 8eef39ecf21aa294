"""Side-by-side media: ground-truth frames above reconstructed frames."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] floats → uint8."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def frames_grid(truth: np.ndarray, recon: np.ndarray, num_frames: int = 4, *,
                min_frame_size: int = 128) -> np.ndarray:
  """A 2-row uint8 image: `num_frames` evenly spaced frames of `truth` above the same frames
  of `recon`, each frame upscaled (nearest, integer factor) to at least `min_frame_size`
  pixels so a 32² clip is visible at a glance.

  truth, recon: (T, H, W, C) in [-1, 1]. Returns (2·f·H, num_frames·f·W, C), f the factor.
  """
  t, h, w = truth.shape[:3]
  idx = np.unique(np.linspace(0, t - 1, min(num_frames, t)).round().astype(int))
  factor = max(1, -(-min_frame_size // min(h, w)))
  rows = [np.concatenate(list(to_uint8(v[idx])), axis=1) for v in (truth, recon)]
  grid = np.concatenate(rows, axis=0)
  return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(image: np.ndarray, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)  # never leave a half-written image behind
  return path
