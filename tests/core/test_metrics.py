"""PSNR / SSIM: hand-computed values and parity with a scipy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from bootvae_jax.core.metrics import frame_batches
from bootvae_jax.core.metrics import per_frame_psnr
from bootvae_jax.core.metrics import per_frame_ssim
from bootvae_jax.core.metrics import psnr
from bootvae_jax.core.metrics import ssim


def _clip(seed, shape=(2, 3, 24, 20, 3)):
  rng = np.random.default_rng(seed)
  b, t, h, w, c = shape
  coarse = rng.uniform(-1, 1, (b, t, h // 4, w // 4, c))
  smooth = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)
  return np.clip(smooth + rng.normal(0, 0.05, shape), -1, 1).astype(np.float32)


def test_psnr_of_known_mse():
  x = np.zeros((1, 2, 4, 4, 3), np.float32)
  y = np.full_like(x, 0.1)
  y[..., ::2, :] = -0.1  # sign pattern: MSE stays exactly 0.1^2
  want = 10 * math.log10(4 / 0.01)  # 26.0206 dB
  np.testing.assert_allclose(psnr(x, y), [want], rtol=1e-6)
  np.testing.assert_allclose(per_frame_psnr(x, y), [[want, want]], rtol=1e-6)


def test_psnr_is_the_mean_of_per_frame_psnr():
  x = np.zeros((2, 2, 4, 4, 1), np.float32)
  y = x.copy()
  y[:, 0] = 0.1  # MSE 0.01 -> 26.02 dB
  y[:, 1] = 0.2  # MSE 0.04 -> 20.00 dB
  frames = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)]
  np.testing.assert_allclose(per_frame_psnr(x, y), [frames, frames], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(psnr)(x, y), [np.mean(frames)] * 2, rtol=1e-6)
  # Not the PSNR of the clip-wide MSE (0.025 -> 22.04 dB).
  assert abs(float(psnr(x, y)[0]) - 10 * math.log10(4 / 0.025)) > 0.9


def test_psnr_data_range():
  x = np.zeros((1, 1, 4, 4, 1), np.float32)
  y = np.full_like(x, 0.1)
  np.testing.assert_allclose(psnr(x, y, data_range=1.0), [10 * math.log10(1 / 0.01)], rtol=1e-6)


def test_ssim_of_identical_clips_is_one():
  x = _clip(0)
  np.testing.assert_allclose(jax.jit(ssim)(x, x), [1.0, 1.0], rtol=0, atol=1e-6)


def test_ssim_of_flat_frames_hand_computed():
  # Flat frames: variances and covariance are 0, so SSIM is the luminance term alone,
  # with means taken after shifting [-1, 1] to [0, 2]: mu_x = 1.0, mu_y = 1.5.
  x = np.zeros((1, 1, 12, 12, 3), np.float32)
  y = np.full_like(x, 0.5)
  c1 = (0.01 * 2) ** 2
  want = (2 * 1.0 * 1.5 + c1) / (1.0**2 + 1.5**2 + c1)
  np.testing.assert_allclose(ssim(x, y), [want], rtol=1e-6)


def _ssim_reference(x, y, data_range=2.0):
  """float64 SSIM with scipy's Gaussian filter (truncate 3.5 -> 11 taps), valid region."""
  x = x.astype(np.float64) + data_range / 2
  y = y.astype(np.float64) + data_range / 2
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  pad = 5
  out = np.zeros(x.shape[:2])
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      per_channel = []
      for c in range(x.shape[-1]):
        a, d = x[b, t, ..., c], y[b, t, ..., c]
        blur = lambda v: ndimage.gaussian_filter(v, sigma=1.5, truncate=3.5)[pad:-pad, pad:-pad]
        mu_a, mu_d = blur(a), blur(d)
        var_a = blur(a * a) - mu_a**2
        var_d = blur(d * d) - mu_d**2
        cov = blur(a * d) - mu_a * mu_d
        s = (
            (2 * mu_a * mu_d + c1)
            * (2 * cov + c2)
            / ((mu_a**2 + mu_d**2 + c1) * (var_a + var_d + c2))
        )
        per_channel.append(s.mean())
      out[b, t] = np.mean(per_channel)
  return out


@pytest.mark.parametrize('noise', [0.05, 0.3])
def test_ssim_matches_scipy_reference(noise):
  x = _clip(1)
  y = np.clip(x + noise * np.random.default_rng(2).normal(size=x.shape), -1, 1)
  y = y.astype(np.float32)
  ref = _ssim_reference(x, y)
  np.testing.assert_allclose(per_frame_ssim(x, y), ref, rtol=0, atol=1e-5)
  np.testing.assert_allclose(ssim(x, y), ref.mean(axis=1), rtol=0, atol=1e-5)
  assert ref.max() < 0.999  # the comparison is not between two values of 1


def test_ssim_decreases_with_noise():
  x = _clip(3, (1, 1, 24, 24, 3))
  noise = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
  values = [float(ssim(x, np.clip(x + s * noise, -1, 1))[0]) for s in (0.02, 0.1, 0.3)]
  assert values[0] > values[1] > values[2]


def test_ssim_rejects_frames_smaller_than_the_window():
  x = np.zeros((1, 1, 8, 16, 3), np.float32)
  with pytest.raises(ValueError, match='11x11'):
    ssim(x, x)


def test_frame_batches_hold_at_most_the_pixel_budget():
  assert frame_batches(9, 32, 48, 4 * 32 * 48) == [slice(0, 4), slice(4, 8), slice(8, 9)]
  assert frame_batches(3, 720, 1280, 2**20) == [slice(0, 1), slice(1, 2), slice(2, 3)]
  # A frame over the budget still goes alone (LPIPS tiles it; PSNR and SSIM take it whole).
  assert frame_batches(2, 1080, 1920, 2**20) == [slice(0, 1), slice(1, 2)]
