"""Inflation of an image VAE into 3D layouts (models/init.py): which layouts reproduce the image
VAE before any training (≤ 1e-4 on a random clip), and which do not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bootvae_jax import models
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder
from bootvae_jax.models import blocks
from bootvae_jax.models import image_vae
from bootvae_jax.models import init

import tiny


def tiny_image_config():
  """4 levels (8x spatial), widths 8·(1,2,2,2), mid attention: the SD layout, tiny."""
  return image_vae.image_vae_config(
      block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4
  )


@pytest.fixture(scope="module")
def image_model():
  model = image_vae.ImageVAE(tiny_image_config(), rngs=autoencoder.init_rngs(3))
  # Random norm scales / biases, so a norm copied to the wrong place cannot go unnoticed.
  state = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(4), 200))
  state = nnx.map_state(
      lambda p, v: v.replace(v[...] + 0.3 * jax.random.normal(next(keys), v.shape))
      if p[-2] in ("norm1", "norm2", "norm", "norm_out")
      else v,
      state,
  )
  nnx.update(model, state)
  return model


def per_frame_layout(temporal: bool):
  """The image layout in 3D: causal 3×3×3 convs, per-frame GroupNorm; `temporal` gives it 4x
  time compression (strided causal conv down, d2s up), like the ProMAG base."""
  config = tiny_image_config()
  config.name = "per_frame_3d"
  for side in (config.encoder, config.decoder):
    side.update(conv_in="3d", conv_out="3d", blocks=("3d",) * 4, mid_block="3d")
  config.encoder.downsample = (
      ("conv3d:s",) + (("conv3d:st",) * 2 if temporal else ("conv3d:s",) * 2) + ("",)
  )
  config.decoder.upsample = ("", "d2s:s") + (("d2s:st",) * 2 if temporal else ("d2s:s",) * 2)
  return config


def odvae_layout(variant: int):
  config = architectures.odvae_variant(
      variant, hidden_size=8, hidden_size_mult=[1, 2, 2, 2], num_res_blocks=1
  )
  config.num_groups = 4
  return config


def _clip(frames, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).uniform(-1, 1, (2, frames, 16, 16, 3)), jnp.float32
  )


def _inflated(image_model, config, mode="tail"):
  # Abstract build: inflate fills every parameter (it raises otherwise).
  model = nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(config, rngs=nnx.Rngs(0)))
  nnx.update(model, models.inflate(image_model, config, mode))
  return model


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(a - b)))


def test_inflate_kernel_modes():
  k = np.arange(6, dtype=np.float32).reshape(1, 1, 1, 2, 3)
  np.testing.assert_array_equal(init.inflate_kernel(k, 3, "tail")[2], k[0])
  assert not init.inflate_kernel(k, 3, "tail")[:2].any()
  np.testing.assert_array_equal(init.inflate_kernel(k, 3, "centre")[1], k[0])
  np.testing.assert_allclose(init.inflate_kernel(k, 3, "average").sum(0), k[0], rtol=1e-6)
  with pytest.raises(ValueError, match="use one of"):
    init.inflate_kernel(k, 3, "first")


def test_nearest_conv_equals_conv_then_depth_to_space():
  rngs = nnx.Rngs(0)
  nearest = blocks.NearestUpsample(
      4, blocks.ResampleSpec("nearest2d", 1, 2), conv=blocks.ConvSettings(), rngs=rngs
  )
  d2s = blocks.DepthToSpaceUpsample(
      4, blocks.ResampleSpec("d2s", 1, 2), conv=blocks.ConvSettings(), rngs=rngs
  )
  d2s.conv.kernel.set_value(
      jnp.asarray(
          init.inflate_kernel(
              init.nearest_conv_as_depth_to_space(np.asarray(nearest.conv.kernel[...])), 3, "tail"
          )
      )
  )
  d2s.conv.bias.set_value(jnp.tile(nearest.conv.bias[...], 4))
  x = jax.random.normal(jax.random.key(1), (1, 2, 5, 6, 4))
  assert _max_diff(d2s(x), nearest(x)) < 1e-5


def test_tail_inflation_reproduces_the_image_vae_frame_by_frame(image_model):
  """No temporal compression: every frame is the image VAE's, to 1e-4 (before training)."""
  x = _clip(3)
  image_recon, image_post = image_model(x)
  model = _inflated(image_model, per_frame_layout(temporal=False))
  recon, post = model(x)
  assert recon.shape == x.shape
  assert _max_diff(post.mean, image_post.mean) < 1e-4
  assert _max_diff(recon, image_recon) < 1e-4
  # Centre / average inflation mix earlier frames into a causal conv: not the image VAE.
  for mode in ("centre", "average"):
    assert (
        _max_diff(
            _inflated(image_model, per_frame_layout(False), mode).encode(x).mean, image_post.mean
        )
        > 1e-2
    )


def test_tail_inflation_reproduces_keyframes_with_4x_time_compression(image_model):
  """4x causal: latent k = image latent of frame 4k; frame t = image decoding of latent ⌈t/4⌉."""
  x = _clip(9)
  model = _inflated(image_model, per_frame_layout(temporal=True))
  assert model.temporal_factor == 4
  post = model.encode(x)
  assert post.mean.shape == (2, 3, 2, 2, 4)
  image_post = image_model.encode(x[:, ::4])
  assert _max_diff(post.mean, image_post.mean) < 1e-4
  assert _max_diff(post.logvar, image_post.logvar) < 1e-4
  z = post.mean
  recon = model.decode(z)
  held = z[:, -(-jnp.arange(9) // 4)]  # latent ⌈t/4⌉ for every frame t
  assert _max_diff(recon, image_model.decode(held)) < 1e-4


def test_released_odvae_layout_does_not_reproduce(image_model):
  """OD-VAE: clip-wide GroupNorm in 3D blocks and trilinear upsampling. Its encoder reproduces
  the keyframe latents once its norms are per frame; its decoder never does."""
  x = _clip(5)
  config = odvae_layout(4)
  model = _inflated(image_model, config)
  image_latent = image_model.encode(x[:, ::4]).mean
  assert _max_diff(model.encode(x).mean, image_latent) > 1e-2
  for side in (config.encoder, config.decoder):
    side.norm = side.attention_norm = "groupnorm_frame"
  model = _inflated(image_model, config)
  assert _max_diff(model.encode(x).mean, image_latent) < 1e-4
  z = image_latent
  held = z[:, -(-jnp.arange(5) // 4)]
  assert _max_diff(model.decode(z), image_model.decode(held)) > 1e-2


def test_promag_base_inflates_but_rms_norm_differs(image_model):
  config = tiny.tiny_model_config((1, 2, 2, 2), attention=True)
  model = _inflated(image_model, config)
  x = _clip(9)
  assert _max_diff(model.encode(x).mean, image_model.encode(x[:, ::4]).mean) > 1e-2


def test_mismatched_layout_names_parameters(image_model):
  config = per_frame_layout(temporal=False)
  config.channel_multipliers = (1, 2, 2, 4)
  with pytest.raises(
      ValueError,
      match=r"cannot inflate \(\d+\): decoder/conv_in/bias: image \(16,\), video \(32,\)",
  ):
    models.inflate(image_model, config)
  config = architectures.cvvae(
      dict(architectures.cvvae_released_kwargs(), ch=8, ch_mult=[1, 2, 2, 2], num_res_blocks=1)
  )
  config.num_groups = 4
  with pytest.raises(ValueError, match=r"no image parameter \(\d+\): .*q_t"):
    models.inflate(image_model, config)


def test_grown_config_is_refused(image_model):
  config = per_frame_layout(temporal=True)
  config.growth = models.autoencoder.default_model_config().growth
  config.growth.levels = 1
  with pytest.raises(ValueError, match="inflate the base model"):
    models.inflate(image_model, config)
