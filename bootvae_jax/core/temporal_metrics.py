"""Temporal-quality metrics: what a clip's mean PSNR averages away.

High temporal compression shows as ghosting and stutter, chunked inference as flicker at chunk
boundaries, and a causal model as uneven quality across the frames of a latent group. Each
metric compares a reconstruction x̂ with its input x, both (T, H, W, 3) or (B, T, H, W, 3)
in [-1, 1]:

* per-phase PSNR: the PSNR of the frames at each position of a latent group. For temporal
  compression r the first frame is phase 0 (a latent of its own), then frame 1 + k·r + (p-1)
  has phase p in 1..r. A vector of r + 1 values, each the mean over its frames of the
  per-frame PSNR (`core/metrics.py`'s convention; +inf where every frame is exact).
* flicker: mean |(x̂_t − x̂_{t−1}) − (x_t − x_{t−1})|, the error of the frame-to-frame change;
  0 for a perfect reconstruction, the input's mean |x_t − x_{t−1}| for a frozen one.
* tLP (TecoGAN, Chu et al. 2020): mean_t |LPIPS(x_{t−1}, x_t) − LPIPS(x̂_{t−1}, x̂_t)|, with the
  LPIPS function passed in (`losses/perceptual.LPIPS`; this floor does not import losses).
* tOF (TecoGAN): the mean end-point distance between the Farnebäck optical flow of the input
  and that of the reconstruction, frame pair by frame pair (OpenCV, TecoGAN's parameters).
* inference-mode gap: PSNR of a chunked / streamed reconstruction minus PSNR of one
  whole-clip pass of the same model (0 for exact streaming).

A clip a metric cannot score (one frame, shorter than one latent group, a length that breaks
the frame rule 1 + r·k) gets `NotApplicable(reason)` from the metric, never NaN or an error.
Per-phase PSNR and flicker are jit-able for clips whose shape they accept.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from bootvae_jax.core import metrics
from bootvae_jax.core import video_io

# TecoGAN's Farnebäck settings: pyramid scale, levels, window, iterations, poly_n, poly_sigma.
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


@dataclasses.dataclass(frozen=True)
class NotApplicable:
  """A metric that cannot score a clip, and why."""

  reason: str

  def to_json(self) -> dict:
    return {"value": None, "reason": self.reason}


def pairs_reason(num_frames: int) -> str | None:
  """Why frame-to-frame metrics (flicker, tLP, tOF) cannot score `num_frames`, or None."""
  if num_frames < 2:
    return f"{num_frames} frame(s): a frame-to-frame metric needs at least 2 frames"
  return None


def phase_reason(num_frames: int, temporal_factor: int) -> str | None:
  """Why per-phase PSNR cannot score `num_frames` at compression r, or None.

  Every phase needs a frame (one latent group at least), and a partial last group would weigh
  its phases unequally.
  """
  r = temporal_factor
  if num_frames < 1 + r:
    return (
        f"{num_frames} frame(s) is shorter than one latent group: per-phase PSNR at"
        f" {r}x needs at least {1 + r} frames"
    )
  if (num_frames - 1) % r:
    return (
        f"{num_frames} frames breaks the frame rule 1 + {r}·k (the last latent group is"
        f" partial; e.g. {1 + r * ((num_frames - 1) // r)} frames)"
    )
  return None


def frame_phases(num_frames: int, temporal_factor: int) -> np.ndarray:
  """The phase of every frame: 0 for the first, then 1..r cycling. (num_frames,) int."""
  t = np.arange(num_frames)
  return np.where(t == 0, 0, (t - 1) % temporal_factor + 1)


def _batched(x, y) -> tuple[jax.Array, jax.Array, bool]:
  """(B, T, H, W, C) views of two clips of equal shape, and whether they came unbatched."""
  if x.shape != y.shape or x.ndim not in (4, 5):
    raise ValueError(
        f"expected two (T, H, W, C) or (B, T, H, W, C) clips of equal shape; got {x.shape}"
        f" and {y.shape}"
    )
  if x.ndim == 4:
    return x[None], y[None], True
  return x, y, False


def per_phase_psnr(
    truth: jax.Array, recon: jax.Array, temporal_factor: int, data_range: float = 2.0
) -> jax.Array | NotApplicable:
  """PSNR by phase inside the latent group (see the module docstring).

  Args:
    truth, recon: (T, H, W, C) or (B, T, H, W, C) in [-1, 1], T = 1 + r·k with k ≥ 1.
    temporal_factor: r.
    data_range: max - min of the value range (2 for [-1, 1]).

  Returns:
    (r + 1,) or (B, r + 1) float32 dB; or NotApplicable for a length it cannot score.
  """
  x, y, squeeze = _batched(truth, recon)
  if (reason := phase_reason(x.shape[1], temporal_factor)) is not None:
    return NotApplicable(reason)
  out = phase_means(metrics.per_frame_psnr(x, y, data_range), temporal_factor)
  return out[0] if squeeze else out


def phase_means(per_frame: jax.Array, temporal_factor: int) -> jax.Array:
  """Means of per-frame values (..., T) over the frames of each phase: (..., r + 1).

  T must satisfy `phase_reason`. Frames are picked by static indices, not a one-hot product
  (0·inf would be NaN), so an infinite PSNR stays infinite.
  """
  phases = frame_phases(per_frame.shape[-1], temporal_factor)
  xp = np if isinstance(per_frame, np.ndarray) else jnp
  return xp.stack(
      [
          xp.mean(per_frame[..., np.flatnonzero(phases == p)], axis=-1)
          for p in range(temporal_factor + 1)
      ],
      axis=-1,
  )


def per_frame_flicker(truth: jax.Array, recon: jax.Array) -> jax.Array:
  """|(x̂_t − x̂_{t−1}) − (x_t − x_{t−1})| averaged over pixels: (T-1,) or (B, T-1) float32.
  Needs T ≥ 2."""
  x, y, squeeze = _batched(truth, recon)
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  change_error = jnp.abs((y[:, 1:] - y[:, :-1]) - (x[:, 1:] - x[:, :-1]))
  out = jnp.mean(change_error, axis=(2, 3, 4))
  return out[0] if squeeze else out


def flicker(truth: jax.Array, recon: jax.Array) -> jax.Array | NotApplicable:
  """Mean `per_frame_flicker` over a clip's frame pairs: a scalar or (B,); or NotApplicable
  for a single frame."""
  if (reason := pairs_reason(truth.shape[-4])) is not None:
    return NotApplicable(reason)
  return jnp.mean(per_frame_flicker(truth, recon), axis=-1)


def per_frame_tlp(
    truth: jax.Array, recon: jax.Array, lpips_fn: Callable[[jax.Array, jax.Array], jax.Array]
) -> jax.Array:
  """|LPIPS(x_{t−1}, x_t) − LPIPS(x̂_{t−1}, x̂_t)| per frame pair: (T-1,) or (B, T-1).

  lpips_fn: (N, H, W, 3), (N, H, W, 3) in [-1, 1] → (N,) distances (e.g. `perceptual.LPIPS`).
  Needs T ≥ 2. Jit-able when lpips_fn is.
  """
  x, y, squeeze = _batched(truth, recon)
  b, t = x.shape[:2]

  def consecutive_lpips(v):
    frames = v.shape[2:]
    return lpips_fn(v[:, :-1].reshape((-1,) + frames), v[:, 1:].reshape((-1,) + frames))

  out = tlp_of_changes(consecutive_lpips(x), consecutive_lpips(y)).reshape(b, t - 1)
  return out[0] if squeeze else out


def tlp_of_changes(truth_changes, recon_changes):
  """tLP per frame pair from the LPIPS between consecutive frames of the input and of the
  reconstruction (e.g. `losses.perceptual.lpips_over_clip`'s consecutive_x / consecutive_y):
  |LPIPS(x_{t−1}, x_t) − LPIPS(x̂_{t−1}, x̂_t)|, same shape."""
  return abs(truth_changes - recon_changes)


def tlp(
    truth: jax.Array, recon: jax.Array, lpips_fn: Callable[[jax.Array, jax.Array], jax.Array]
) -> jax.Array | NotApplicable:
  """Mean `per_frame_tlp` over a clip's frame pairs: a scalar or (B,); or NotApplicable."""
  if (reason := pairs_reason(truth.shape[-4])) is not None:
    return NotApplicable(reason)
  return jnp.mean(per_frame_tlp(truth, recon, lpips_fn), axis=-1)


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 or in [-1, 1] → (H, W) uint8 luma, as TecoGAN reads its PNGs."""
  rgb = frame if frame.dtype == np.uint8 else video_io.to_uint8(frame)
  return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def farneback_flow(prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
  """Dense optical flow from `prev` to `next_` ((H, W, 3) uint8 or in [-1, 1]): (H, W, 2)
  float32 of (dx, dy) in pixels, content at (x, y) in prev being at (x + dx, y + dy) in next_."""
  return cv2.calcOpticalFlowFarneback(
      _gray_uint8(prev), _gray_uint8(next_), None, *FARNEBACK_PARAMS
  )


def per_frame_tof(truth: np.ndarray, recon: np.ndarray) -> np.ndarray:
  """Mean over pixels of ||flow(x_{t−1}, x_t) − flow(x̂_{t−1}, x̂_t)||₂ per frame pair:
  (T-1,) or (B, T-1) float32 (numpy, on the host). Clips uint8 or in [-1, 1]; needs T ≥ 2."""
  x, y, squeeze = _batched(np.asarray(truth), np.asarray(recon))
  out = np.zeros(x.shape[:1] + (x.shape[1] - 1,), np.float32)
  for b in range(x.shape[0]):
    for t in range(1, x.shape[1]):
      diff = farneback_flow(x[b, t - 1], x[b, t]) - farneback_flow(y[b, t - 1], y[b, t])
      out[b, t - 1] = np.mean(np.sqrt(np.sum(np.square(diff), axis=-1)))
  return out[0] if squeeze else out


def tof(truth: np.ndarray, recon: np.ndarray) -> np.ndarray | NotApplicable:
  """Mean `per_frame_tof` over a clip's frame pairs: a scalar or (B,); or NotApplicable."""
  if (reason := pairs_reason(np.shape(truth)[-4])) is not None:
    return NotApplicable(reason)
  return np.mean(per_frame_tof(truth, recon), axis=-1)


def per_frame_mode_gap(
    truth: np.ndarray, mode_recon: np.ndarray, whole_recon: np.ndarray, data_range: float = 2.0
) -> np.ndarray:
  """PSNR of an inference mode's reconstruction minus that of one whole-clip pass, per frame of
  one (T, H, W, C) clip in [-1, 1]: (T,) float, negative where the mode loses quality.

  Frames the two reconstructions share exactly read 0 (so an exact stream reads 0.0 even where
  both are perfect, with infinite PSNR).
  """
  x, m, w = (np.asarray(v, np.float32)[None] for v in (truth, mode_recon, whole_recon))
  if not x.shape == m.shape == w.shape or x.ndim != 5:
    raise ValueError(
        f"expected three (T, H, W, C) clips of equal shape; got {truth.shape},"
        f" {mode_recon.shape} and {whole_recon.shape}"
    )
  same = np.all(m == w, axis=(2, 3, 4))[0]
  psnr_mode = np.asarray(metrics.per_frame_psnr(m, x, data_range))[0]
  psnr_whole = np.asarray(metrics.per_frame_psnr(w, x, data_range))[0]
  with np.errstate(invalid="ignore"):
    return np.where(same, 0.0, psnr_mode - psnr_whole)


def mode_gap(
    truth: np.ndarray, mode_recon: np.ndarray, whole_recon: np.ndarray, data_range: float = 2.0
) -> float:
  """The mean over frames of `per_frame_mode_gap`: the mode's PSNR (mean of per-frame dB) minus
  that of one whole-clip pass, for one (T, H, W, C) clip."""
  return float(np.mean(per_frame_mode_gap(truth, mode_recon, whole_recon, data_range)))
