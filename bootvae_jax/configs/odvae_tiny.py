r"""A tiny OD-VAE-layout model (any of the four variants) trained from scratch on CPU.

  python -m bootvae_jax.main --config=configs/odvae_tiny.py:4 --workdir=workdirs/odvae_tiny

The layout is `configs/odvae.py`'s at a width a CPU trains in minutes (the official parity
fixture's sizes: 32 channels, one res block per level); random initialisation, no GAN.
"""

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config


def get_config(variant: str = "4"):
  config = default_config()
  config.name = f"odvae_tiny_v{variant}"
  config.total_steps = 300
  config.log_every = 10
  config.eval_every = 100
  config.checkpoint_every = 100
  config.model = architectures.odvae_variant(
      int(variant), hidden_size=32, hidden_size_mult=[1, 1, 2, 2], num_res_blocks=1
  )
  config.data.source = "synthetic"
  config.data.num_frames = 9
  config.data.crop_size = (32, 32)
  config.data.batch_size = 2
  config.optimizer.update(learning_rate=2e-3, warmup_steps=20, ema_decay=0.99)
  config.loss.kl_weight = 1e-6
  return config
