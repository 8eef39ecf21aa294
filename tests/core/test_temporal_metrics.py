"""Temporal metrics: exact values on hand-made clips, and 'not applicable' for clips they
cannot score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.core import metrics
from bootvae_jax.core import temporal_metrics as tm


def textured_clip(t: int, h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
  """A smooth random texture sliding right by one pixel per frame: (t, h, w, 3) in [-1, 1]."""
  import cv2  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  base = rng.uniform(-1, 1, (h + 8, w + t + 8, 3)).astype(np.float32)
  base = cv2.GaussianBlur(base, (0, 0), 2.0)
  base = base / np.abs(base).max()
  # Frame i shows base[:, t - i : t - i + w]: content moves right by one pixel a frame.
  return np.stack([base[4 : 4 + h, t - i + 4 : t - i + 4 + w] for i in range(t)])


def l1_lpips(x, y):
  """A stand-in perceptual distance with the LPIPS signature: (N, H, W, 3) x 2 → (N,)."""
  return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))


def test_frame_phases_follow_the_latent_groups():
  np.testing.assert_array_equal(tm.frame_phases(9, 4), [0, 1, 2, 3, 4, 1, 2, 3, 4])
  np.testing.assert_array_equal(tm.frame_phases(5, 2), [0, 1, 2, 1, 2])


def test_identical_clips_score_zero_change_error_and_infinite_phase_psnr():
  clip = textured_clip(9, 32, 32)
  phase = tm.per_phase_psnr(clip, clip, 4)
  assert phase.shape == (5,) and np.all(np.isinf(np.asarray(phase)))
  # As the clip-level PSNR does for identical frames.
  assert np.isinf(float(metrics.psnr(clip[None], clip[None])[0]))
  assert float(tm.flicker(clip, clip)) == 0.0
  assert float(tm.tlp(clip, clip, l1_lpips)) == 0.0
  assert float(tm.tof(clip, clip)) == 0.0


def test_phase_indexing_finds_the_only_wrong_phase():
  truth = np.zeros((9, 8, 8, 3), np.float32)
  recon = truth.copy()
  recon[[2, 6]] = 0.2  # frames 1 + k·4 + 1: phase 2 of both groups
  phase = np.asarray(tm.per_phase_psnr(truth, recon, 4))
  expected = 10 * np.log10(4.0 / 0.04)  # MSE 0.04 over [-1, 1] (range 2)
  assert np.all(np.isinf(phase[[0, 1, 3, 4]]))
  np.testing.assert_allclose(phase[2], expected, rtol=1e-5)


def test_per_phase_psnr_batches_and_jits():
  truth = np.zeros((2, 5, 8, 8, 3), np.float32)
  recon = truth.copy()
  recon[0, 0] = 0.2  # clip 0: phase 0 wrong
  recon[1, [1, 3]] = 0.02  # clip 1: frames 1 and 3, phase 1 at r=2
  phase = np.asarray(jax.jit(lambda x, y: tm.per_phase_psnr(x, y, 2))(truth, recon))
  assert phase.shape == (2, 3)
  np.testing.assert_allclose(phase[0, 0], 20.0, rtol=1e-5)
  np.testing.assert_allclose(phase[1, 1], 40.0, rtol=1e-5)
  assert np.all(np.isinf(phase[0, 1:])) and np.isinf(phase[1, 0]) and np.isinf(phase[1, 2])


def test_frozen_reconstruction_flicker_is_the_inputs_motion():
  truth = textured_clip(9, 32, 32)
  frozen = np.repeat(truth[:1], 9, axis=0)
  motion = np.mean(np.abs(truth[1:] - truth[:-1]))
  np.testing.assert_allclose(float(tm.flicker(truth, frozen)), motion, rtol=1e-5)
  per_pair = np.asarray(tm.per_frame_flicker(truth, frozen))
  np.testing.assert_allclose(
      per_pair, np.mean(np.abs(np.diff(truth, axis=0)), axis=(1, 2, 3)), rtol=1e-5
  )
  # Batched: one value per clip.
  both = np.asarray(tm.flicker(np.stack([truth, truth]), np.stack([frozen, truth])))
  np.testing.assert_allclose(both, [motion, 0.0], rtol=1e-5, atol=1e-7)


def test_tlp_compares_the_consecutive_frame_distances():
  truth = textured_clip(5, 32, 32)
  frozen = np.repeat(truth[:1], 5, axis=0)  # every consecutive distance is 0
  expected = np.mean([float(l1_lpips(truth[t - 1 : t], truth[t : t + 1])[0]) for t in range(1, 5)])
  np.testing.assert_allclose(float(tm.tlp(truth, frozen, l1_lpips)), expected, rtol=1e-5)


def test_farneback_flow_of_a_one_pixel_shift_is_one_pixel_right():
  clip = textured_clip(2, 64, 64)
  flow = tm.farneback_flow(clip[0], clip[1])
  interior = flow[16:-16, 16:-16]  # away from the borders, where the flow is ill-posed
  # Tolerance: 0.05 px on the mean, 0.1 px per pixel (measured: mean dx 0.99).
  np.testing.assert_allclose(interior.mean(axis=(0, 1)), [1.0, 0.0], atol=0.05)
  assert np.max(np.abs(interior - np.array([1.0, 0.0]))) < 0.1


def test_tof_of_a_frozen_reconstruction_is_the_inputs_flow():
  truth = textured_clip(3, 64, 64)
  frozen = np.repeat(truth[:1], 3, axis=0)
  # A frozen clip has zero flow, so tOF is the mean flow magnitude of the input: ≈ 1 px.
  value = float(tm.tof(truth, frozen))
  assert 0.8 < value < 1.1
  # uint8 clips (as evaluation keeps them) give the same flows.
  as_uint8 = lambda v: np.round((v + 1.0) * 127.5).astype(np.uint8)
  assert float(tm.tof(as_uint8(truth), as_uint8(frozen))) == value


def test_clips_that_do_not_fit_are_not_applicable_with_a_reason():
  one = np.zeros((1, 16, 16, 3), np.float32)
  for result in (
      tm.per_phase_psnr(one, one, 4),
      tm.flicker(one, one),
      tm.tlp(one, one, l1_lpips),
      tm.tof(one, one),
  ):
    assert isinstance(result, tm.NotApplicable)
    assert "1 frame" in result.reason
    assert result.to_json() == {"value": None, "reason": result.reason}
  six = np.zeros((6, 16, 16, 3), np.float32)
  result = tm.per_phase_psnr(six, six, 4)
  assert isinstance(result, tm.NotApplicable) and "frame rule 1 + 4·k" in result.reason
  assert "e.g. 5 frames" in result.reason
  three = np.zeros((3, 16, 16, 3), np.float32)
  result = tm.per_phase_psnr(three, three, 4)
  assert isinstance(result, tm.NotApplicable) and "shorter than one latent group" in result.reason
  # Frame-to-frame metrics need no latent group: 6 frames are scored.
  assert float(tm.flicker(six, six)) == 0.0


def test_mode_gap_is_zero_for_the_same_reconstruction_and_signed_otherwise():
  truth = textured_clip(5, 16, 16)
  whole = np.clip(truth + 0.01, -1, 1)
  assert tm.mode_gap(truth, whole, whole) == 0.0
  assert tm.mode_gap(truth, truth, truth) == 0.0  # both perfect: 0, not inf - inf
  worse = np.clip(truth + 0.02, -1, 1)
  gap = tm.mode_gap(truth, worse, whole)
  expected = float(
      metrics.psnr(worse[None], truth[None])[0] - metrics.psnr(whole[None], truth[None])[0]
  )
  np.testing.assert_allclose(gap, expected, rtol=1e-5)
  assert gap < -5.0  # twice the error: about -6 dB
  # Per frame: only the frame where the mode differs from the whole-clip pass has a gap.
  one_worse = np.concatenate([worse[:1], whole[1:]])
  per_frame = tm.per_frame_mode_gap(truth, one_worse, whole)
  assert per_frame[0] < -5.0 and np.all(per_frame[1:] == 0.0)


def test_mismatched_shapes_are_refused():
  with pytest.raises(ValueError, match="equal shape"):
    tm.flicker(np.zeros((3, 8, 8, 3)), np.zeros((4, 8, 8, 3)))
