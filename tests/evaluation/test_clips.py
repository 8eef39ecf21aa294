"""Scoring clips with a model: exact PSNR of a known reconstruction, the held-frame variant of
`input_stride`, and the per-run cache that a rerun reads instead of loading the model."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bootvae_jax.core import metrics
from bootvae_jax.evaluation import clips as clips_lib


class _Shift(nnx.Module):
  """A 'model' whose reconstruction is its input plus `offset` (the autoencoder's (x, ...))."""

  def __init__(self, offset: float):
    self.offset = offset

  def __call__(self, x):
    return (x + self.offset, None)


def _clips(n=4, frames=9):
  return np.random.default_rng(0).uniform(-0.5, 0.5, (n, frames, 16, 16, 3)).astype(np.float32)


def test_scores_of_a_known_reconstruction():
  clips = _clips()
  exact = clips_lib.score_clips(_Shift(0.0), clips)
  assert exact["psnr"] == math.inf and exact["ssim"] == 1.0
  # Off by 0.1 everywhere: MSE 0.01 on data range 2, PSNR = 10 log10(4 / 0.01) = 26.021 dB in
  # every clip (4 clips in batches of 3 and 1).
  shifted = clips_lib.score_clips(_Shift(0.1), clips, batch=3)
  assert shifted["psnr_per_clip"] == [26.021] * 4 and shifted["psnr"] == 26.021
  ssim = float(np.mean(metrics.ssim(clips + 0.1, clips)))
  assert shifted["ssim"] == round(ssim, 4) and 0.9 < ssim < 1.0
  # The reconstruction is clipped to [-1, 1] before it is scored: 0.8 + 0.5 counts as 1.0.
  bright = np.full((1, 5, 16, 16, 3), 0.8, np.float32)
  assert clips_lib.score_clips(_Shift(0.5), bright)["psnr"] == pytest.approx(
      10 * math.log10(4 / 0.04), abs=1e-3
  )


def test_an_input_stride_holds_each_seen_frame():
  clips = _clips(n=2)
  held = clips_lib.score_clips(_Shift(0.1), clips, input_stride=4)
  # Frames 0, 4, 8 are seen; 1-3 show frame 4, 5-7 show frame 8.
  expected = clips[:, [0, 4, 4, 4, 4, 8, 8, 8, 8]] + 0.1
  psnr = np.asarray(metrics.psnr(expected, clips))
  np.testing.assert_allclose(held["psnr_per_clip"], psnr, atol=1e-3)
  assert held["psnr"] == pytest.approx(float(np.mean(psnr)), abs=1e-3) and held["psnr"] < 20


def test_scores_are_cached_per_run_and_the_model_loaded_only_when_needed(tmp_path):
  loaded = []

  def load(run_dir):
    loaded.append(run_dir)
    return _Shift(0.1)

  clips, run_dir = _clips(n=2), str(tmp_path)
  scorer = clips_lib.RunScorer(run_dir, load=load)
  first = scorer.scores("heldout", clips)
  assert first["psnr"] == 26.021 and loaded == [run_dir]
  assert scorer.scores("heldout", clips[:1]) == first  # the key names the clips: cached
  held = scorer.scores("heldout_held4", clips, input_stride=4)
  assert held["psnr"] < first["psnr"] and loaded == [run_dir]  # one load per scorer
  with open(tmp_path / "scores.json") as f:
    assert json.load(f) == {"heldout": first, "heldout_held4": held}
  # A rerun reads the cache without loading the model.
  again = clips_lib.RunScorer(run_dir, load=load)
  assert again.scores("heldout_held4", clips, input_stride=4) == held and len(loaded) == 1

  calls = []
  for _ in range(2):
    assert clips_lib.cached_scores(run_dir, "k", lambda: calls.append(1) or {"psnr": 1.0}) == {
        "psnr": 1.0
    }
  assert len(calls) == 1


class _Frozen(nnx.Module):
  """A 'model' that shows the first frame for the whole clip."""

  def __call__(self, x):
    return (jnp.broadcast_to(x[:, :1], x.shape), None)


def test_temporal_scores_of_a_perfect_and_a_frozen_reconstruction():
  clips = _clips(n=2, frames=9)
  perfect = clips_lib.temporal_scores(_Shift(0.0), clips, 4)
  assert perfect["psnr_per_phase"] == [math.inf] * 5
  assert perfect["flicker"] == 0.0 and perfect["tof"] == 0.0 and perfect["tlp"] < 1e-5
  frozen = clips_lib.temporal_scores(_Frozen(), clips, 4)
  # A reconstruction that never moves: its flicker is the input's own frame-to-frame change.
  motion = float(np.mean(np.abs(clips[:, 1:] - clips[:, :-1])))
  assert frozen["flicker"] == pytest.approx(motion, abs=1e-4)
  assert frozen["psnr_per_phase"][0] == math.inf and max(frozen["psnr_per_phase"][1:]) < 20
  # 6 frames at 4x break the frame rule: phases are not applicable, frame pairs still are.
  short = clips_lib.temporal_scores(_Frozen(), clips[:, :6], 4)
  assert short["psnr_per_phase"]["value"] is None and "1 + 4" in short["psnr_per_phase"]["reason"]
  assert short["flicker"] > 0
