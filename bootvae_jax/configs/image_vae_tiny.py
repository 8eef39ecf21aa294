r"""A tiny SD-layout image VAE on the built-in synthetic videos' frames: a few minutes on a
2-core CPU. It is the image VAE of the tiny CV-VAE and composition configs.

  python -m bootvae_jax.main --config=configs/image_vae_tiny.py --workdir=workdirs/image_vae_tiny
"""

from bootvae_jax.models import image_vae
from bootvae_jax.training.config import default_config

WORKDIR = "workdirs/image_vae_tiny"
# Shared by the tiny video configs that inflate it or regularise with it (same layout).
WIDTHS = (8, 16, 16, 16)
LATENT_CHANNELS = 4
NUM_GROUPS = 4


def get_config():
  config = default_config()
  config.name = "image_vae_tiny"
  config.total_steps = 1_000
  config.log_every = 20
  config.eval_every = 250
  config.checkpoint_every = 250
  config.model = image_vae.image_vae_config(
      block_out_channels=WIDTHS,
      layers_per_block=1,
      latent_channels=LATENT_CHANNELS,
      norm_num_groups=NUM_GROUPS,
  )
  config.data.source = "synthetic"
  config.data.num_frames = 1
  config.data.crop_size = (32, 32)
  config.data.batch_size = 8
  config.optimizer.update(learning_rate=2e-3, warmup_steps=50, ema_decay=0.99)
  config.loss.kl_weight = 1e-6
  return config
