"""Scoring a set of clips with a model: mean and per-clip PSNR / SSIM of its reconstructions,
and a per-run cache of those scores (`<run_dir>/scores.json`), so that rerunning an experiment
only scores what is new.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

SCORES_FILE = "scores.json"


def score_clips(model, clips, *, batch: int = 3, input_stride: int = 1) -> dict[str, Any]:
  """{'psnr', 'ssim', 'psnr_per_clip'} of `model`'s reconstructions (posterior mean) of clips
  (N, T, H, W, 3) in [-1, 1] (PSNR with data range 2 per frame, averaged per clip, then over
  clips).

  With `input_stride` s > 1 the model sees frames 0, s, 2s, ... and its reconstruction of frame
  ks is also shown for frames (k-1)s+1 ... ks-1, scored against the full clip: the s-times more
  compressing model that a trained one gives for free."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from bootvae_jax.core import metrics  # pylint: disable=g-import-not-at-top

  graphdef, state = nnx.split(model)

  @jax.jit
  def scores(state, x):
    recon = jnp.clip(nnx.merge(graphdef, state)(x[:, ::input_stride])[0], -1.0, 1.0)
    if input_stride > 1:
      held = jnp.repeat(recon[:, 1:], input_stride, axis=1)
      recon = jnp.concatenate([recon[:, :1], held], axis=1)
    return metrics.psnr(recon, x), metrics.ssim(recon, x)

  psnrs, ssims = [], []
  for i in range(0, len(clips), batch):
    p, s = jax.device_get(scores(state, jnp.asarray(clips[i : i + batch])))
    psnrs.append(p)
    ssims.append(s)
  psnr = np.concatenate(psnrs)
  return dict(
      psnr=round(float(np.mean(psnr)), 3),
      ssim=round(float(np.mean(np.concatenate(ssims))), 4),
      psnr_per_clip=[round(float(v), 3) for v in psnr],
  )


def temporal_scores(model, clips, temporal_factor: int, *, batch: int = 3) -> dict[str, Any]:
  """Temporal quality of `model`'s reconstructions of clips (N, T, H, W, 3) in [-1, 1]
  (`core/temporal_metrics.py`), each the mean over clips: PSNR by phase inside the latent group
  of `temporal_factor` r frames (`psnr_per_phase`, r + 1 values), `flicker`, `tlp` and `tof`; a
  metric the clip length cannot score is {'value': None, 'reason': ...}."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from bootvae_jax.core import temporal_metrics as tm  # pylint: disable=g-import-not-at-top
  from bootvae_jax.losses import perceptual  # pylint: disable=g-import-not-at-top

  factor = int(temporal_factor)
  num_frames = clips.shape[1]
  graphdef, state = nnx.split(model)
  lpips = perceptual.LPIPS.from_package()

  @jax.jit
  def reconstruct(state, x):
    return jnp.clip(nnx.merge(graphdef, state)(x)[0], -1.0, 1.0)

  tlp_of = jax.jit(lambda x, y: tm.tlp(x, y, lpips))

  pair_reason, phase_reason = tm.pairs_reason(num_frames), tm.phase_reason(num_frames, factor)
  per_phase, flicker, tlp, tof = [], [], [], []
  for i in range(0, len(clips), batch):
    x = jnp.asarray(clips[i : i + batch])
    y = reconstruct(state, x)
    if phase_reason is None:
      per_phase.append(np.asarray(tm.per_phase_psnr(x, y, factor)))
    if pair_reason is None:
      flicker.append(np.asarray(tm.flicker(x, y)))
      tlp.append(np.asarray(tlp_of(x, y)))
      tof.append(np.asarray(tm.tof(np.asarray(x), np.asarray(y))))

  def mean(values, reason, digits):
    if reason is not None:
      return tm.NotApplicable(reason).to_json()
    return round(float(np.mean(np.concatenate(values))), digits)

  phases = (
      tm.NotApplicable(phase_reason).to_json()
      if phase_reason is not None
      else [round(float(v), 3) for v in np.mean(np.concatenate(per_phase), axis=0)]
  )
  return dict(
      psnr_per_phase=phases,
      flicker=mean(flicker, pair_reason, 5),
      tlp=mean(tlp, pair_reason, 5),
      tof=mean(tof, pair_reason, 4),
  )


def cached_scores(run_dir: str, key: str, compute: Callable[[], dict]) -> dict:
  """`compute()` once per (run directory, key), kept in `<run_dir>/scores.json`."""
  path = os.path.join(run_dir, SCORES_FILE)
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  if key not in cache:
    cache[key] = compute()
    with open(path + ".tmp", "w") as f:
      json.dump(cache, f)
    os.replace(path + ".tmp", path)
  return cache[key]


class RunScorer:
  """Scores of one finished run's model, cached in its run directory under a key that names
  the clips (a different clip set needs another key); the model is loaded at the first score
  that is not cached yet."""

  def __init__(self, run_dir: str, load: Callable[[str], Any] | None = None):
    self.run_dir = run_dir
    self._load = load or _load_model
    self._model = None

  @property
  def model(self):
    if self._model is None:
      self._model = self._load(self.run_dir)
    return self._model

  def scores(self, key: str, clips, *, input_stride: int = 1) -> dict[str, Any]:
    """`score_clips(model, clips, input_stride=...)`, cached under `key`."""
    return cached_scores(
        self.run_dir, key, lambda: score_clips(self.model, clips, input_stride=input_stride)
    )

  def temporal(self, key: str, clips, temporal_factor: int) -> dict[str, Any]:
    """`temporal_scores(model, clips, temporal_factor)`, cached under `<key>_temporal`."""
    return cached_scores(
        self.run_dir,
        f"{key}_temporal",
        lambda: temporal_scores(self.model, clips, temporal_factor),
    )


def _load_model(run_dir: str):
  import bootvae_jax  # pylint: disable=g-import-not-at-top

  return bootvae_jax.load_model(run_dir)[0]
