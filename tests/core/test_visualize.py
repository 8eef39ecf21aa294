"""Side-by-side frames: truth above reconstruction, upscaled so small clips are visible."""

import numpy as np

from bootvae_jax.core import visualize


def test_frames_grid_puts_truth_above_recon_and_upscales_small_frames():
  rng = np.random.default_rng(0)
  truth = rng.uniform(-1, 1, (9, 32, 32, 3)).astype(np.float32)
  recon = -truth
  grid = visualize.frames_grid(truth, recon, 4)
  assert grid.shape == (2 * 128, 4 * 128, 3) and grid.dtype == np.uint8  # 32 px x4 → 128
  frames = np.unique(np.linspace(0, 8, 4).round().astype(int))
  np.testing.assert_array_equal(
      grid[:128:4, 128 * 2 : 128 * 3 : 4], visualize.to_uint8(truth[frames[2]])
  )
  np.testing.assert_array_equal(grid[128::4, :128:4], visualize.to_uint8(recon[0]))
  assert visualize.frames_grid(truth, recon, 4, min_frame_size=16).shape == (64, 128, 3)
