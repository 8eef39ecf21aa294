"""Shared fixtures for the inference tests: one tiny causal model per session."""

import pytest

from bootvae_jax import models

import tiny


@pytest.fixture(scope="session")
def tiny_model():
  """4x temporal, 8x spatial, per-frame norms, no attention: seconds to compile on a CPU."""
  return models.build_model(tiny.tiny_model_config(), seed=0)
