r"""Shows what a config feeds the model: one JSON summary line and a PNG grid of clips.

  python -m bootvae_jax.data.preview --config=configs/data_preview_example.py \
      --num_batches=2 --out=/tmp/preview \
      --config.data.source=video_folder --config.data.path=/path/to/videos

Works with any config file whose config has a `data` subtree. The batches come from
`make_train_batches` on one device, so they are exactly what training reads. stdout gets one
JSON object: batches, shape, dtype, range ([min, max] over all batches), files_indexed,
files_skipped ([{file, reason}]), read_failures and grid (the PNG path). The grid has one row
per clip (at most MAX_CLIPS) and one column per frame (at most MAX_FRAMES, evenly spaced).
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np
from PIL import Image

from bootvae_jax import cli
from bootvae_jax.core import sharding
from bootvae_jax.data import pipeline
from bootvae_jax.data import transforms

_CONFIG = cli.define_flag(  # other command lines define --config too (tests import them all)
    config_flags.DEFINE_config_file,
    "config",
    None,
    "Config file whose get_config() has a `data` subtree.",
)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 2, "Batches to draw.")
_OUT = flags.DEFINE_string("out", None, "Folder for the PNG grid (created if missing).")

MAX_CLIPS = 16
MAX_FRAMES = 17
# Tiles are enlarged (nearest neighbour) to at least this many pixels on the short side.
MIN_TILE_SIDE = 64
GAP = 2


def clip_grid(clips: np.ndarray) -> np.ndarray:
  """Lays clips out as an image: a row per clip, a column per frame.

  Args:
    clips: (N, T, H, W, 3) float in [-1, 1].

  Returns:
    (N * (h + GAP) - GAP, F * (w + GAP) - GAP, 3) uint8 on white, with F = min(T,
    MAX_FRAMES) and tiles enlarged by an integer factor to h, w >= MIN_TILE_SIDE.
  """
  num_clips, num_frames, height, width, _ = clips.shape
  frames = np.unique(
      np.linspace(0, num_frames - 1, min(num_frames, MAX_FRAMES)).round().astype(int)
  )
  scale = max(1, -(-MIN_TILE_SIDE // min(height, width)))
  tile_height, tile_width = height * scale, width * scale
  grid = np.full(
      (num_clips * (tile_height + GAP) - GAP, len(frames) * (tile_width + GAP) - GAP, 3),
      255,
      np.uint8,
  )
  tiles = transforms.to_uint8(clips[:, frames]).repeat(scale, axis=2).repeat(scale, axis=3)
  for row in range(num_clips):
    for column in range(len(frames)):
      top, left = row * (tile_height + GAP), column * (tile_width + GAP)
      grid[top : top + tile_height, left : left + tile_width] = tiles[row, column]
  return grid


def preview(data_config: Any, *, num_batches: int, out_dir: str, seed: int = 0) -> dict:
  """Draws `num_batches` training batches, writes the grid, returns the summary."""
  mesh = sharding.make_mesh({}, devices=jax.devices()[:1])
  batches = pipeline.make_train_batches(data_config, mesh=mesh, seed=seed)
  shown, low, high = [], np.inf, -np.inf
  try:
    for _ in range(num_batches):
      video = np.asarray(next(batches)["video"])
      low, high = min(low, float(video.min())), max(high, float(video.max()))
      shown.extend(video[: MAX_CLIPS - len(shown)])
  finally:
    batches.close()
  os.makedirs(out_dir, exist_ok=True)
  grid_path = os.path.join(out_dir, "clips.png")
  Image.fromarray(clip_grid(np.stack(shown))).save(grid_path)
  stats = batches.stats()
  return {
      "batches": num_batches,
      "shape": list(video.shape),
      "dtype": str(video.dtype),
      "range": [low, high],
      "files_indexed": int(stats["data/files_indexed"]),
      "files_skipped": [skipped.to_json() for skipped in batches.skipped_files],
      "read_failures": int(stats["data/read_failures"]),
      "grid": grid_path,
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if "data" not in config:
    raise app.UsageError("the --config file's get_config() has no `data` subtree")
  summary = preview(
      config.data, num_batches=_NUM_BATCHES.value, out_dir=_OUT.value, seed=config.get("seed", 0)
  )
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "out"])
  cli.run(main)
