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


_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127))


def line_chart(series: dict[str, list], *, title: str = "", x_label: str = "",
               y_label: str = "", size: tuple[int, int] = (720, 440)) -> np.ndarray:
  """A line chart as a uint8 (H, W, 3) image (PIL only: no plotting library needed).

  series: name → [(x, y), ...]; one coloured polyline with dots per series, a legend, axis
  ticks at 5 rounded positions.
  """
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top

  width, height = size
  left, right, top, bottom = 70, 20, 40, 60
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  points = [p for values in series.values() for p in values]
  xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
  x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
  pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
  y0, y1 = min(ys) - pad, max(ys) + pad

  def at(x, y):
    return (left + (x - x0) / (x1 - x0) * (width - left - right),
            top + (y1 - y) / (y1 - y0) * (height - top - bottom))

  draw.rectangle([left, top, width - right, height - bottom], outline="black")
  for i in range(5):
    xv, yv = x0 + i * (x1 - x0) / 4, y0 + i * (y1 - y0) / 4
    px, _ = at(xv, y0)
    _, py = at(x0, yv)
    draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
    draw.text((px - 12, height - bottom + 6), f"{xv:g}", fill="black")
    draw.line([left - 4, py, left, py], fill="black")
    draw.text((8, py - 6), f"{yv:.2f}", fill="black")
  draw.text((left, 12), title, fill="black")
  draw.text(((width - len(x_label) * 6) // 2, height - 22), x_label, fill="black")
  draw.text((8, 24), y_label, fill="black")
  for i, (name, values) in enumerate(series.items()):
    color = _PALETTE[i % len(_PALETTE)]
    line = [at(float(x), float(y)) for x, y in values]
    if len(line) > 1:
      draw.line(line, fill=color, width=2)
    for px, py in line:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    ly = top + 8 + 14 * i
    draw.line([width - right - 190, ly + 5, width - right - 170, ly + 5], fill=color, width=3)
    draw.text((width - right - 165, ly), name, fill="black")
  return np.asarray(image)
