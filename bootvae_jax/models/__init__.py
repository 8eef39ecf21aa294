"""The model library. `build_model(config.model, rngs=...)` builds what a `model` config
describes: a `VideoAutoencoder`, or a ProMAG `GrownAutoencoder` when `model.growth.levels > 0`.
"""

from bootvae_jax.models.init import inflate
from bootvae_jax.models.progressive import build_model
from bootvae_jax.models.progressive import compression_factors
from bootvae_jax.models.progressive import validate_model_config

__all__ = ["build_model", "inflate", "compression_factors", "validate_model_config"]
