r"""ProMAG stage I: the base causal tokenizer, 4x temporal and 8x spatial, z_dim 8.

  python -m bootvae_jax.main --config=configs/promag_4x.py --workdir=workdirs/promag_4x \
      --config.data.path=/path/to/videos

Then `configs/promag_8x.py` grows it to 8x and `configs/promag_16x.py` to 16x; each stage
reads the previous stage's workdir. The paper trains stage I with L1 + KL + GAN on 17-frame
clips; it publishes no steps, batch or learning rate, so those below are ours. The default
workdirs (`WORKDIR`) are relative: run every stage from the same directory, or point the next
stage at this one with `--config.init_checkpoint.path`.
"""

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config

WORKDIR = "workdirs/promag_4x"  # where the next stage looks for this stage's checkpoint


def get_config():
  config = default_config()
  config.name = "promag_4x"
  config.total_steps = 200_000
  config.log_every = 100
  config.eval_every = 5_000
  config.checkpoint_every = 5_000
  config.model = architectures.promag_base(
      z_dim=8, base_channels=128, channel_multipliers=(1, 2, 2, 4), num_res_blocks=2
  )
  config.data.source = "video_folder"
  config.data.num_frames = 17
  config.data.resize_short_side = 288
  config.data.crop_size = (256, 256)
  config.data.frame_stride = (1, 2)
  config.data.batch_size = 64
  config.data.num_workers = 4
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 2_000
  config.loss.l1_weight = 1.0
  config.loss.kl_weight = 1e-6
  config.loss.gan_weight = 0.1
  config.loss.gan_start_step = 100_000  # the GAN joins once reconstructions are sharp
  # bf16 compute, float32 parameters and optimizer state: a TPU runs float32 products at a
  # fraction of its bf16 rate, and bf16 activations cut the step's memory (results/pod_fit.md).
  config.model.dtype = "bfloat16"
  config.target_topology = "v5p-64"  # python -m bootvae_jax.aot checks the fit (README)
  return config
