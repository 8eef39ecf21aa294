"""Tests for `bootvae_jax.models.image_vae`: a training workdir of an image-VAE config loads as
an `ImageVAE` with its trained weights and scaling factor."""

import numpy as np

from bootvae_jax import loading
from bootvae_jax.configs import image_vae_tiny
from bootvae_jax.models import image_vae

import tiny


def test_image_vae_workdir_loads_as_image_vae(image_vae_workdir):
  model = loading.load_image_vae(image_vae_workdir)
  assert isinstance(model, image_vae.ImageVAE)
  assert model.config.scaling_factor == tiny.IMAGE_VAE_SCALING_FACTOR
  assert model.latent_channels == image_vae_tiny.LATENT_CHANNELS
  trained = loading.load_params(image_vae_workdir)
  np.testing.assert_array_equal(
      model.encoder.conv_in.kernel[...], trained["encoder/conv_in/kernel"]
  )
