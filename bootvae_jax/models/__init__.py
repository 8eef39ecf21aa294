"""The model library. `build_model(config.model)` builds what a `model` config describes: a
`VideoAutoencoder`, or a ProMAG `GrownAutoencoder` when `model.growth.levels > 0`.
`compression_factors` and `validate_model_config` answer for base and grown configs alike.
"""

from bootvae_jax.models.autoencoder import compression_factors
from bootvae_jax.models.autoencoder import validate_model_config
from bootvae_jax.models.init import inflate
from bootvae_jax.models.progressive import build_model

__all__ = ["build_model", "inflate", "compression_factors", "validate_model_config"]
