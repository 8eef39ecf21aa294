"""Demo: a tiny ProMAG base tokenizer (4x time, 8x space) on the built-in synthetic videos.

Finishes in a few minutes on a 2-core CPU:

  python -m bootvae_jax.main --config=configs/demo.py --workdir=/tmp/bootvae_demo

Architecture: 2x2 pixel patches in and out (`model.patch_size`, no full-resolution conv) and
per-frame GroupNorm (causal), the layout of the ProMAG experiment's CPU preset, initialised so
that it leaves the data mean: every 3D conv starts as a 2D conv of its own frame
(`model.kernel_init="current_frame"`) and the decoder's last kernel is scaled by 0.1
(`model.output_init_scale`). Measured on the 2-core CPU (issue 9, results/demo_learning.md):
eval PSNR 15.2 dB after the default 300 steps, against ~14.3 dB (the data mean) with PyTorch's
default init; still short of a recognisable reconstruction.
"""

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config


def get_config():
  config = default_config()
  config.name = "demo"
  config.total_steps = 300
  config.log_every = 10
  config.eval_every = 100
  config.checkpoint_every = 100
  config.model = architectures.promag_base(
      z_dim=8, base_channels=16, channel_multipliers=(1, 1, 2, 4), num_res_blocks=1, num_groups=8
  )
  config.model.patch_size = 2  # 2x2 patches replace the first spatial downsample (still 8x)
  config.model.kernel_init = "current_frame"
  config.model.output_init_scale = 0.1
  config.model.encoder.downsample = ("", "conv3d:st", "conv3d:st", "")
  config.model.decoder.upsample = ("", "", "d2s:st", "d2s:st")
  for side in (config.model.encoder, config.model.decoder):
    side.norm = side.attention_norm = "groupnorm_frame"
    side.mid_attention = "none"
  config.data.source = "synthetic"
  config.data.num_frames = 9
  config.data.crop_size = (32, 32)
  config.data.batch_size = 4
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 20
  config.optimizer.ema_decay = 0.99
  config.loss.kl_weight = 1e-6
  config.eval.num_clips = 4
  return config
