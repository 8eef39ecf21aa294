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


# Line colours, cycled (matplotlib's default palette).
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def _ticks(low: float, high: float, count: int = 5) -> np.ndarray:
  if high <= low:
    high = low + 1.0
  return np.linspace(low, high, count)


def line_plot(series, *, title: str, xlabel: str, ylabel: str, size=(640, 400),
              log_x: bool = False) -> np.ndarray:
  """A line chart as an RGB uint8 image (no plotting library needed).

  Args:
    series: [(label, xs, ys, width)] (width optional, default 2); non-finite points are
      skipped; at most ~10 labelled series stay legible.
    title, xlabel, ylabel: text.
    size: (width, height) in pixels.
    log_x: logarithmic x axis.

  Returns:
    (height, width, 3) uint8.
  """
  from PIL import ImageDraw  # pylint: disable=import-outside-toplevel

  width, height = size
  left, right, top, bottom = 64, 16, 28, 44
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  points = [(np.asarray(s[1], np.float64), np.asarray(s[2], np.float64)) for s in series]
  finite = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in points]
  xs = np.concatenate([x for x, _ in finite] or [np.zeros(1)])
  ys = np.concatenate([y for _, y in finite] or [np.zeros(1)])
  fx = np.log10 if log_x else (lambda v: v)
  x0, x1 = fx(xs.min()), fx(xs.max())
  y0, y1 = ys.min(), ys.max()
  if x1 <= x0:
    x1 = x0 + 1.0
  pad = 0.05 * (y1 - y0 or 1.0)
  y0, y1 = y0 - pad, y1 + pad
  px = lambda v: left + (fx(v) - x0) / (x1 - x0) * (width - left - right)
  py = lambda v: height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)
  draw.rectangle([left, top, width - right, height - bottom], outline="black")
  for v in _ticks(y0, y1):
    draw.line([left - 4, py(v), left, py(v)], fill="black")
    draw.text((4, py(v) - 6), f"{v:.4g}", fill="black")
  xticks = 10 ** _ticks(x0, x1) if log_x else _ticks(x0, x1)
  for v in xticks:
    draw.line([px(v), height - bottom, px(v), height - bottom + 4], fill="black")
    draw.text((px(v) - 12, height - bottom + 6), f"{v:.4g}", fill="black")
  draw.text((left, 8), title, fill="black")
  draw.text(((width - len(xlabel) * 6) // 2, height - 18), xlabel, fill="black")
  draw.text((4, top - 22 if top > 22 else 0), ylabel, fill="black")
  for i, ((x, y), spec) in enumerate(zip(finite, series)):
    colour = PALETTE[i % len(PALETTE)]
    line_width = spec[3] if len(spec) > 3 else 2
    coords = [(px(a), py(b)) for a, b in zip(x, y)]
    if len(coords) > 1:
      draw.line(coords, fill=colour, width=line_width)
    for cx, cy in coords if len(coords) < 40 else coords[:1]:
      draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
    if spec[0]:
      ly = top + 6 + 14 * i
      draw.line([width - right - 150, ly + 6, width - right - 130, ly + 6], fill=colour, width=3)
      draw.text((width - right - 126, ly), str(spec[0])[:20], fill="black")
  return np.asarray(image)
