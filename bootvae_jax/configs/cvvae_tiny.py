r"""A tiny CV-VAE-layout model trained with the latent-compatibility regulariser on CPU.

  python -m bootvae_jax.main --config=configs/image_vae_tiny.py --workdir=workdirs/image_vae_tiny
  python -m bootvae_jax.main --config=configs/cvvae_tiny.py --workdir=workdirs/cvvae_tiny

The frozen image VAE is `configs/image_vae_tiny.py`'s run (override with
`--config.compat.image_vae`); the regulariser is configured as in `configs/cvvae.py`.
"""

from bootvae_jax.configs import cvvae
from bootvae_jax.configs import image_vae_tiny

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config


def get_config():
  config = default_config()
  config.name = "cvvae_tiny"
  config.total_steps = 300
  config.log_every = 10
  config.eval_every = 100
  config.checkpoint_every = 100
  widths = image_vae_tiny.WIDTHS
  config.model = architectures.cvvae(
      dict(
          architectures.cvvae_released_kwargs(),
          ch=widths[0],
          num_res_blocks=1,
          ch_mult=[w // widths[0] for w in widths],
          z_channels=image_vae_tiny.LATENT_CHANNELS,
      )
  )
  config.model.num_groups = image_vae_tiny.NUM_GROUPS
  config.data.source = "synthetic"
  config.data.num_frames = 9
  config.data.crop_size = (32, 32)
  config.data.batch_size = 2
  config.optimizer.update(learning_rate=2e-3, warmup_steps=20, ema_decay=0.99)
  config.loss.kl_weight = 1e-6
  config.compat = cvvae.get_config().compat
  config.compat.image_vae = image_vae_tiny.WORKDIR
  return config
