"""CV-VAE (arXiv 2405.20279): the released architecture with its published training recipe.

  python -m bootvae_jax.main --config=configs/cvvae.py --workdir=DIR \
      --config.data.source=video_folder --config.data.path=/data/videos

Recipe (the released SD 1.x/2.x-latent model, as its paper publishes it):
17-frame clips, 256² random crops after resizing to 512, frame stride 1–8; L1 + LPIPS 0.5;
4-layer 3D patch GAN (64 filters) with adaptive weight 0.5 from step 1; KL 1.0 on the
per-sample sum; AdamW β (0.9, 0.98), eps 1e-4, wd 0.01; LR 2e-5 → generator 4e-5, 1k warmup.
Latent compatibility (losses/compat.py): the frozen SD image VAE decodes every video latent
frame and is compared with a random frame of the group it stands for, weighted 1.0 through the
released learnable log-variance. `IMAGE_VAE` is a diffusers folder (e.g. `vae/` of
`stabilityai/stable-diffusion-2-1`, or `stabilityai/sd-vae-ft-mse`), or an image-VAE workdir
(`configs/image_vae.py`); the model takes over its scaling factor.
"""

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config

IMAGE_VAE = "pretrained/sd-vae-ft-mse"  # download it there, or --config.compat.image_vae=DIR


def get_config():
  config = default_config()
  config.name = "cvvae"
  config.total_steps = 200_000
  config.log_every = 50
  config.eval_every = 2_000
  config.checkpoint_every = 2_000
  config.model = architectures.cvvae(architectures.cvvae_released_kwargs())
  config.data.num_frames = 17
  config.data.resize_short_side = 512
  config.data.crop_size = (256, 256)
  config.data.frame_stride = (1, 8)
  config.data.batch_size = 8
  config.optimizer.update(
      learning_rate=4e-5,
      warmup_steps=1_000,
      b1=0.9,
      b2=0.98,
      eps=1e-4,
      weight_decay=0.01,
      ema_decay=0.999,
  )
  config.loss.update(
      l1_weight=1.0,
      perceptual_weight=0.5,
      perceptual_frames=4,
      kl_weight=1.0,
      gan_weight=0.5,
      gan_start_step=1,
      adaptive_gan_weight=True,
  )
  config.discriminator.update(base_channels=64, num_layers=4, learning_rate=2e-5)
  config.compat.update(
      image_vae=IMAGE_VAE, decoder_weight=1.0, mapping="random", learned_logvar=True
  )
  config.mesh.update(data=-1, fsdp=1)
  # bf16 compute, float32 parameters and optimizer state: a TPU runs float32 products at a
  # fraction of its bf16 rate, and bf16 activations cut the step's memory (results/pod_fit.md).
  config.model.dtype = "bfloat16"
  config.target_topology = "v5p-16"  # python -m bootvae_jax.aot checks the fit (README)
  return config
