"""CV-VAE regularisers (losses/compat.py): frame mappings, the log-variance weighting, and both
sides of the regulariser on exact numbers with stand-in image VAEs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.losses import compat
from bootvae_jax.models.autoencoder import DiagonalGaussian


def _video(b=2, t=9):
  """Frame i of clip j has the constant value 10·j + i."""
  values = 10.0 * np.arange(b)[:, None] + np.arange(t)[None]
  return jnp.asarray(np.broadcast_to(values[:, :, None, None, None], (b, t, 2, 2, 3)), jnp.float32)


def test_slice_mapping_takes_every_rth_frame():
  out = compat.map_frames(_video(), 4, "slice")
  np.testing.assert_array_equal(out[:, :, 0, 0, 0], [[0, 4, 8], [10, 14, 18]])


def test_mean_mapping_averages_each_group_after_the_first_frame():
  out = compat.map_frames(_video(), 4, "mean")
  np.testing.assert_allclose(out[:, :, 0, 0, 0], [[0, 2.5, 6.5], [10, 12.5, 16.5]])


def test_random_mapping_draws_one_frame_per_group_per_clip():
  outs = [
      np.asarray(compat.map_frames(_video(), 4, "random", jax.random.key(s)))[:, :, 0, 0, 0]
      for s in range(20)
  ]
  for out in outs:
    np.testing.assert_array_equal(out[:, 0], [0, 10])
    assert all(1 <= v % 10 <= 4 for v in out[:, 1]) and all(5 <= v % 10 <= 8 for v in out[:, 2])
  assert len({tuple(o.ravel()) for o in outs}) > 5  # not a fixed choice
  with pytest.raises(ValueError, match="needs an rng"):
    compat.map_frames(_video(), 4, "random")
  with pytest.raises(ValueError, match="1\\+4k"):
    compat.map_frames(_video(t=8), 4, "slice")


def test_log_variance_weighting_settles_at_log_loss():
  loss = jnp.float32(0.3)
  grad = jax.grad(lambda s: compat.log_variance_weighted(loss, s))
  assert abs(float(grad(jnp.log(loss)))) < 1e-6
  assert float(grad(jnp.float32(0.0))) > 0  # s = 0 > log 0.3: gradient descent lowers s
  assert float(compat.log_variance_weighted(loss, jnp.float32(0.0))) == pytest.approx(0.3)


class _MeanImageVAE:
  """Stand-in image VAE: decode maps a latent to frames filled with its channel mean; encode
  gives a posterior whose mean is the frame's value in every channel."""

  def decode(self, z):
    value = z.mean(axis=(2, 3, 4), keepdims=True)
    return jnp.broadcast_to(value, z.shape[:2] + (2, 2, 3))

  def encode(self, x):
    return DiagonalGaussian(x[..., :1].repeat(4, -1), jnp.full(x.shape[:-1] + (4,), -30.0))


class _HoldVideoDecoder:
  """Stand-in video decoder: repeats every latent frame 4 times after the first."""

  def decode(self, z):
    rest = jnp.repeat(z[:, 1:], 4, axis=1)
    return jnp.concatenate([z[:, :1], rest], axis=1)[..., :3]


def test_decoder_side_compares_image_decodings_with_mapped_frames():
  x = _video()
  z = jnp.zeros((2, 3, 2, 2, 4)) + jnp.asarray([0.0, 4.0, 8.0])[None, :, None, None, None]
  loss, decoded = compat.decoder_side(_MeanImageVAE(), z, x, temporal_factor=4, mapping="slice")
  # Clip 0 decodes to its slice frames exactly; clip 1's frames are 10 more.
  assert decoded.shape == (2, 3, 2, 2, 3)
  assert float(loss) == pytest.approx(5.0)
  assert (
      float(
          compat.compatibility_psnr(
              _MeanImageVAE(), z / 10, x / 10, temporal_factor=4, mapping="random"
          )[0]
      )
      > 50
  )


def test_encoder_side_reconstructs_the_clip_from_image_latents_of_every_rth_frame():
  x = _video(b=1)
  loss = compat.encoder_side(_MeanImageVAE(), _HoldVideoDecoder(), x, temporal_factor=4)
  # Reconstruction: frame 0, then frame 4 four times, then frame 8 four times.
  expected = np.mean(np.abs(np.array([0, 4, 4, 4, 4, 8, 8, 8, 8]) - np.arange(9)))
  assert float(loss) == pytest.approx(expected)
