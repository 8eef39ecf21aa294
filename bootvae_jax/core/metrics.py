"""Frame-quality metrics for reconstructed video: PSNR and SSIM (LPIPS: losses.perceptual).

Conventions (the usual ones in the video-VAE papers' evaluation scripts): a metric is
computed per frame and averaged over the frames of a clip, giving one number per video;
the caller averages over videos. Everything runs in float32 and is jit-able.
"""

import jax
import jax.numpy as jnp

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# Pixels one metric call takes (frames × height × width): metrics over a clip run in frame
# batches of this many pixels, so their memory does not grow with the clip's length; 2^20 is
# one 1280×720 frame (LPIPS cuts larger frames into tiles, `losses/perceptual.py`).
PIXELS_PER_CALL = 2**20


def per_frame_psnr(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
  """PSNR of every frame.

  Args:
    x: (B, T, H, W, C) in [-1, 1].
    y: (B, T, H, W, C) in [-1, 1].
    data_range: max - min of the value range (2 for [-1, 1]).

  Returns:
    (B, T) float32 `10 * log10(data_range^2 / MSE)`, MSE over (H, W, C) of one frame;
    +inf for identical frames.
  """
  _check_clips(x, y)
  diff = x.astype(jnp.float32) - y.astype(jnp.float32)
  mse = jnp.mean(jnp.square(diff), axis=(2, 3, 4))
  return 10.0 * jnp.log10(data_range**2 / mse)


def psnr(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
  """PSNR per video: the mean over frames of the per-frame PSNR.

  (Not the PSNR of the clip-wide MSE: averaging per-frame dB is the usual convention.)

  Args:
    x: (B, T, H, W, C) in [-1, 1].
    y: (B, T, H, W, C) in [-1, 1].
    data_range: max - min of the value range (2 for [-1, 1]).

  Returns:
    (B,) float32 PSNR in dB (+inf if every frame is identical).
  """
  return jnp.mean(per_frame_psnr(x, y, data_range), axis=1)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> jax.Array:
  """Normalised 1D Gaussian taps (size,), centred; the SSIM window is its outer product."""
  offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  taps = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  return taps / jnp.sum(taps)


def _blur_valid(maps: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable Gaussian filter with 'valid' borders, each channel on its own.

  maps: (N, H, W, K) -> (N, H - size + 1, W - size + 1, K).
  """
  k = maps.shape[-1]
  size = taps.shape[0]
  dn = ('NHWC', 'HWIO', 'NHWC')
  # Highest precision: SSIM subtracts E[x]^2 from E[x^2], bf16/tf32 passes would show.
  hi = jax.lax.Precision.HIGHEST
  rows = jnp.tile(taps.reshape(size, 1, 1, 1), (1, 1, 1, k))
  cols = jnp.tile(taps.reshape(1, size, 1, 1), (1, 1, 1, k))
  maps = jax.lax.conv_general_dilated(
      maps, rows, (1, 1), 'VALID', dimension_numbers=dn, feature_group_count=k, precision=hi
  )
  return jax.lax.conv_general_dilated(
      maps, cols, (1, 1), 'VALID', dimension_numbers=dn, feature_group_count=k, precision=hi
  )


def per_frame_ssim(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
  """SSIM of every frame (Wang et al. 2004), as tf.image.ssim / skimage compute it.

  11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample)
  statistics, no padding ('valid' window positions only), computed per RGB channel and
  averaged over channels and positions. SSIM is not shift-invariant (its luminance term
  uses absolute means), so values are first shifted from [-data_range/2, data_range/2]
  (i.e. [-1, 1]) to [0, data_range]: the result equals SSIM of the [0, 1] / uint8 frames.

  Args:
    x: (B, T, H, W, C) in [-1, 1] (generally [-data_range/2, data_range/2]); H, W >= 11.
    y: (B, T, H, W, C), same range.
    data_range: max - min of the value range (2 for [-1, 1]).

  Returns:
    (B, T) float32 SSIM; 1 for identical frames.
  """
  _check_clips(x, y)
  b, t, h, w, c = x.shape
  if h < SSIM_WINDOW or w < SSIM_WINDOW:
    raise ValueError(f'SSIM uses an {SSIM_WINDOW}x{SSIM_WINDOW} window; frames are {h}x{w}')
  x = x.astype(jnp.float32).reshape(b * t, h, w, c) + data_range / 2.0
  y = y.astype(jnp.float32).reshape(b * t, h, w, c) + data_range / 2.0
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2

  # (Co)variances are shift-invariant: take them of frames centred on their mean, so
  # E[x^2] - E[x]^2 does not cancel catastrophically in float32 (an error of 1e-7 in the
  # window's sum would otherwise shift SSIM by ~1e-4 on flat frames).
  mean_x = jnp.mean(x, axis=(1, 2), keepdims=True)
  mean_y = jnp.mean(y, axis=(1, 2), keepdims=True)
  xc, yc = x - mean_x, y - mean_y
  # One filter pass over the five moment maps stacked on channels.
  moments = jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1)
  mu_xc, mu_yc, e_xx, e_yy, e_xy = jnp.split(_blur_valid(moments, gaussian_window_1d()), 5, -1)
  var_x = e_xx - mu_xc * mu_xc
  var_y = e_yy - mu_yc * mu_yc
  cov = e_xy - mu_xc * mu_yc
  mu_x, mu_y = mu_xc + mean_x, mu_yc + mean_y
  ssim_map = (
      (2.0 * mu_x * mu_y + c1)
      * (2.0 * cov + c2)
      / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  )
  return jnp.mean(ssim_map, axis=(1, 2, 3)).reshape(b, t)


def ssim(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
  """SSIM per video: the mean over frames of `per_frame_ssim` (see there for the recipe).

  Args:
    x: (B, T, H, W, C) in [-1, 1]; H, W >= 11.
    y: (B, T, H, W, C) in [-1, 1].
    data_range: max - min of the value range (2 for [-1, 1]).

  Returns:
    (B,) float32 SSIM.
  """
  return jnp.mean(per_frame_ssim(x, y, data_range), axis=1)


def frame_batches(
    num_frames: int, height: int, width: int, pixels_per_call: int = PIXELS_PER_CALL
) -> list[slice]:
  """Consecutive frame ranges covering `num_frames` frames of height × width, each at most
  `pixels_per_call` pixels (at least one frame); all but the last of equal length."""
  step = max(1, pixels_per_call // (height * width))
  return [slice(start, min(start + step, num_frames)) for start in range(0, num_frames, step)]


def _check_clips(x: jax.Array, y: jax.Array) -> None:
  if x.shape != y.shape or x.ndim != 5:
    raise ValueError(
        f'expected two (B, T, H, W, C) clips of equal shape; got {x.shape} ' f'and {y.shape}'
    )
