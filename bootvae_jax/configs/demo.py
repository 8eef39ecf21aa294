"""Demo: a tiny ProMAG base tokenizer (4x time, 4x space) on the built-in synthetic videos.

About three minutes on a 2-core CPU, ending at eval PSNR 24.4 dB (seed 0):

  python -m bootvae_jax.main --config=configs/demo.py --workdir=/tmp/bootvae_demo

Architecture: 2x2 pixel patches in and out (`model.patch_size`, no full-resolution conv), one
space-time and one time-only downsample, widths 16/16/32/32, per-frame GroupNorm (causal), z 8.
What makes it learn in a few hundred steps (results/demo_learning.md): every 3D conv starts as
a 2D conv of its own frame (`model.kernel_init="current_frame"`), the decoder's last kernel
starts at 0.1x (`model.output_init_scale`), every res block's branch is gated by a learnt
scalar starting at 0 (`model.residual_gate`), and the encoder's moments reach the decoder
without 1x1 quant convs. MSE loss (the metric is PSNR); clips at a quarter of the synthetic
source's spatial detail (`data.synthetic_detail`), whose 4×4-cell averages score 25.4 dB.
"""

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config


def start_learnable(model) -> None:
  """The start that makes a small tokenizer learn fast (module docstring), in place on `model`:
  current-frame kernels, the last kernel x0.1, ReZero-gated res blocks, no quant convs."""
  model.update(
      kernel_init="current_frame", output_init_scale=0.1, residual_gate=True, use_quant_conv=False
  )


def get_config():
  config = default_config()
  config.name = "demo"
  config.total_steps = 500
  config.log_every = 25
  config.eval_every = 250
  config.checkpoint_every = 250
  config.model = architectures.promag_base(
      z_dim=8, base_channels=16, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, num_groups=8
  )
  config.model.decoder.num_res_blocks = 1
  config.model.patch_size = 2  # 2x2 patches replace the first spatial downsample
  start_learnable(config.model)
  config.model.encoder.downsample = ("", "conv3d:st", "conv3d:t", "")
  config.model.decoder.upsample = ("", "", "d2s:st", "d2s:t")
  for side in (config.model.encoder, config.model.decoder):
    side.norm = side.attention_norm = "groupnorm_frame"
    side.mid_attention = "none"
  config.data.source = "synthetic"
  config.data.synthetic_detail = 0.25
  config.data.num_frames = 9
  config.data.crop_size = (32, 32)
  config.data.batch_size = 8
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 20
  config.optimizer.ema_decay = 0.99
  config.loss.l1_weight = 0.0
  config.loss.l2_weight = 1.0
  config.loss.kl_weight = 1e-6
  config.eval.num_clips = 8
  return config
