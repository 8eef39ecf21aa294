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


def test_frames_grid_adds_rows_of_frame_differences():
  truth = np.zeros((5, 16, 16, 3), np.float32)
  truth[2:] = 0.1  # one change, between frames 1 and 2
  recon = np.zeros_like(truth)  # a frozen reconstruction: no change at all
  grid = visualize.frames_grid(truth, recon, 5, min_frame_size=16, frame_differences=True)
  assert grid.shape == (4 * 16, 5 * 16, 3)
  truth_changes, recon_changes = grid[32:48], grid[48:64]
  # |0.1| x gain 4 = 0.4 of full white; to_uint8 maps [-1, 1] to [0, 255].
  expected = visualize.to_uint8(np.float32(0.4 * 2 - 1))
  np.testing.assert_array_equal(truth_changes[:, 32:48], expected)
  assert np.all(truth_changes[:, :32] == 0) and np.all(truth_changes[:, 48:] == 0)
  assert np.all(recon_changes == 0)
