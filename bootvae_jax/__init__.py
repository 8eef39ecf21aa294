"""bootvae_jax: causal 3D video autoencoders (video tokenizers) in JAX/Flax NNX.

Implements ProMAG progressive growth, the CV-VAE latent-compatibility regulariser and the
OD-VAE architecture variants over one config-driven model library (`bootvae_jax.models`).
"""

__version__ = "0.1.0"

from bootvae_jax.interop.exported import export  # noqa: E402  (python -m bootvae_jax.export: CLI)
