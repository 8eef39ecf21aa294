r"""An SD-layout image VAE (`models/image_vae.py`) trained in the framework on video frames.

  python -m bootvae_jax.main --config=configs/image_vae.py --workdir=workdirs/image_vae \
      --config.data.path=/path/to/videos

Every clip is one frame (`data.num_frames=1`), so any video folder is an image dataset. The
run's workdir is an image VAE that `config.compat.image_vae` (CV-VAE) and
`config.init_checkpoint.path` with `init_checkpoint.inflate` (OD-VAE tail initialisation)
accept, as they accept a diffusers folder such as `stabilityai/sd-vae-ft-mse`. The recipe is
the video one of configs/odvae.py (L1 + LPIPS, KL 1e-6), on 256² frames.
"""

from bootvae_jax.models import image_vae
from bootvae_jax.training.config import default_config

WORKDIR = "workdirs/image_vae"


def get_config():
  config = default_config()
  config.name = "image_vae"
  config.total_steps = 200_000
  config.log_every = 100
  config.eval_every = 5_000
  config.checkpoint_every = 5_000
  config.model = image_vae.image_vae_config()  # SD 1.x/2.x layout: 128·(1,2,4,4), 4 channels
  config.data.source = "video_folder"
  config.data.num_frames = 1
  config.data.resize_short_side = 288
  config.data.crop_size = (256, 256)
  config.data.random_flip = True
  config.data.batch_size = 32
  config.optimizer.update(learning_rate=1e-4, warmup_steps=2_000, ema_decay=0.999)
  config.loss.update(l1_weight=1.0, perceptual_weight=1.0, perceptual_frames=1, kl_weight=1e-6)
  return config
