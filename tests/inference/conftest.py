"""Shared fixtures for the inference tests: one tiny causal model per session."""

import pytest

from bootvae_jax import models
from bootvae_jax.models import architectures


def _tiny_model_config():
  """4x temporal, 8x spatial, per-frame norms, no attention: seconds to compile on a CPU."""
  config = architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, num_groups=4
  )
  config.encoder.mid_attention = "none"
  config.decoder.mid_attention = "none"
  return config


@pytest.fixture(scope="session")
def tiny_model_config():
  return _tiny_model_config()


@pytest.fixture(scope="session")
def tiny_model():
  return models.build_model(_tiny_model_config(), seed=0)
