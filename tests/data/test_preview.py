"""`python -m bootvae_jax.data.preview`: one JSON line and a PNG grid."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from bootvae_jax.data import preview

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_cli_on_a_video_folder_with_bad_files(bad_video_dir, bad_files, tmp_path):
  out = tmp_path / "preview"
  command = [
      sys.executable,
      "-m",
      "bootvae_jax.data.preview",
      "--config=configs/data_preview_example.py",
      "--num_batches=2",
      f"--out={out}",
      "--config.data.source=video_folder",
      f"--config.data.path={bad_video_dir}",
      "--config.data.num_frames=9",
      "--config.data.frame_stride=(1, 2)",
      f"--config.data.index_cache_dir={tmp_path / 'cache'}",
  ]
  result = subprocess.run(
      command,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout
  summary = json.loads(lines[0])
  assert summary["batches"] == 2
  assert summary["shape"] == [8, 9, 32, 32, 3] and summary["dtype"] == "float32"
  low, high = summary["range"]
  assert -1.0 <= low < -0.5 and 0.5 < high <= 1.0
  assert summary["files_indexed"] == 2
  skipped = {
      pathlib.Path(entry["file"]).name: entry["reason"] for entry in summary["files_skipped"]
  }
  assert sorted(skipped) == sorted(bad_files)
  assert all(word in skipped[name] for name, word in bad_files.items())
  # 16 clips (2 batches of 8) by 9 frames of 32x32, enlarged 2x to 64x64, 2-pixel gaps.
  with Image.open(out / "clips.png") as grid:
    assert grid.size == (9 * 66 - 2, 16 * 66 - 2)
  assert summary["grid"] == str(out / "clips.png")


def test_synthetic_preview_in_process(make_config, tmp_path):
  summary = preview.preview(make_config(batch_size=4), num_batches=1, out_dir=str(tmp_path))
  assert summary["shape"] == [4, 9, 32, 32, 3]
  assert summary["files_indexed"] == 0 and summary["files_skipped"] == []
  grid = np.asarray(Image.open(tmp_path / "clips.png"))
  assert grid.shape == (4 * 66 - 2, 9 * 66 - 2, 3)
  assert grid[64:66].min() == 255  # the gap between the first two rows is white
  assert grid[:64, :64].std() > 5  # a clip frame, not blank
