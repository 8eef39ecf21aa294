"""Side-by-side media: ground-truth frames above reconstructed frames."""

from __future__ import annotations

import io
import os

import numpy as np
from etils import epath
from PIL import Image

from bootvae_jax.core.video_io import to_uint8


def frames_grid(
    truth: np.ndarray,
    recon: np.ndarray,
    num_frames: int = 4,
    *,
    min_frame_size: int = 128,
    frame_differences: bool = False,
    difference_gain: float = 4.0,
) -> np.ndarray:
  """A 2-row uint8 image: `num_frames` evenly spaced frames of `truth` above the same frames
  of `recon`, each frame upscaled (nearest, integer factor) to at least `min_frame_size`
  pixels so a 32² clip is visible at a glance.

  With `frame_differences`, two more rows show |x_t − x_{t−1}| of `truth` and of `recon` at
  the same frames (black for frame 0), times `difference_gain` (white from a change of 1/gain
  in [-1, 1] units up): motion the reconstruction drops (ghosting) or adds (flicker) shows as
  a difference between these rows.

  truth, recon: (T, H, W, C) in [-1, 1]. Returns (R·f·H, num_frames·f·W, C), f the factor, R
  the 2 or 4 rows.
  """
  t, h, w = truth.shape[:3]
  idx = np.unique(np.linspace(0, t - 1, min(num_frames, t)).round().astype(int))
  factor = max(1, -(-min_frame_size // min(h, w)))
  rows = [np.concatenate(list(to_uint8(v[idx])), axis=1) for v in (truth, recon)]
  if frame_differences:
    for v in (truth, recon):
      v = np.asarray(v, np.float32)
      change = np.abs(v[idx] - v[np.maximum(idx - 1, 0)])  # frame 0 minus itself: black
      rows.append(
          np.concatenate(list(to_uint8(np.clip(change * difference_gain, 0, 1) * 2 - 1)), axis=1)
      )
  grid = np.concatenate(rows, axis=0)
  return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(image: np.ndarray, path: str | os.PathLike) -> str:
  """Writes `image` (uint8 (H, W, C)) as a PNG at `path`, a local path or a URL (etils.epath)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, format="PNG")
  tmp = path.parent / f"{path.name}.tmp"
  tmp.write_bytes(encoded.getvalue())
  tmp.replace(path)  # never leave a half-written image behind
  return str(path)


def save_line_plots(path: str, panels: list[dict], *, panel_size=(6.4, 4.0)) -> str:
  """Line charts side by side, written as a PNG (matplotlib, Agg backend).

  Args:
    path: the PNG to write (atomically).
    panels: one dict per chart: `title`, `xlabel`, `ylabel`, `series` = [(label, xs, ys) or
      (label, xs, ys, linewidth)] (label '' keeps a line out of the legend; NaNs are gaps),
      optional `log_x`.
    panel_size: inches per chart.

  Returns:
    path.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(
      1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]), squeeze=False
  )
  for ax, panel in zip(axes[0], panels):
    for label, xs, ys, *width in panel["series"]:
      ax.plot(
          xs,
          ys,
          marker="o" if len(xs) < 40 else None,
          markersize=3,
          linewidth=width[0] if width else 1.5,
          label=label or None,
      )
    if panel.get("log_x"):
      ax.set_xscale("log")
    ax.set(title=panel["title"], xlabel=panel["xlabel"], ylabel=panel["ylabel"])
    ax.grid(alpha=0.3)
    if any(series[0] for series in panel["series"]):
      ax.legend(fontsize="small")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)
  return path
