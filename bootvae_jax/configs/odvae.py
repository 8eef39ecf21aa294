"""OD-VAE (arXiv 2409.01199): one of its four architecture variants with the published recipe.

  python -m bootvae_jax.main --config=configs/odvae.py:4 --workdir=DIR      # variant 4 = released
  python -m bootvae_jax.main --config=configs/odvae.py:1 --workdir=DIR      # all 3D-causal

Variants (our reading, `models/architectures.odvae_variant`): V1 all 3D-causal; V2 2D blocks at
the two highest-resolution levels of encoder and decoder; V3 2D at the highest-resolution
encoder level; V4 the released Open-Sora-Plan v1.2 layout.
Recipe (Open-Sora-Plan v1.2): tail-initialised from the SD 2.1 image VAE (`sd-vae-ft-mse`,
models/init.py); 25×256² clips; L1 + LPIPS 1.0; 3D GAN from step 2000 (weight 0.5); KL 1e-6;
LR 1e-5; EMA 0.999. `IMAGE_VAE` is a diffusers folder or an image-VAE workdir; override with
`--config.init_checkpoint.path=DIR` (random init: set both `path` and `inflate` to '').
"""

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config

IMAGE_VAE = "pretrained/sd-vae-ft-mse"


def get_config(variant: str = "4"):
  config = default_config()
  config.name = f"odvae_v{variant}"
  config.total_steps = 200_000
  config.log_every = 50
  config.eval_every = 2_000
  config.checkpoint_every = 2_000
  config.model = architectures.odvae_variant(int(variant))
  config.data.num_frames = 25
  config.data.resize_short_side = 256
  config.data.crop_size = (256, 256)
  config.data.batch_size = 8
  config.optimizer.update(learning_rate=1e-5, warmup_steps=1_000, ema_decay=0.999)
  config.loss.update(
      l1_weight=1.0,
      perceptual_weight=1.0,
      perceptual_frames=4,
      kl_weight=1e-6,
      gan_weight=0.5,
      gan_start_step=2_000,
      adaptive_gan_weight=True,
  )
  config.discriminator.update(base_channels=64, num_layers=3, learning_rate=1e-5)
  config.init_checkpoint.update(path=IMAGE_VAE, inflate="tail")
  # bf16 compute, float32 parameters and optimizer state: a TPU runs float32 products at a
  # fraction of its bf16 rate, and bf16 activations cut the step's memory (results/pod_fit.md).
  config.model.dtype = "bfloat16"
  config.target_topology = "v5p-16"  # python -m bootvae_jax.aot checks the fit (README)
  return config
