"""Model and training configs at test scale: seconds to compile and run on a 2-core CPU.

Every test that shrinks a model or a run does it here, so "tiny" means one thing. Tests import it
as `import tiny` (tests/ is on sys.path through tests/conftest.py).
"""

import importlib

import ml_collections

from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config

WIDTH = 8  # base channels
NUM_GROUPS = 4
LATENT_CHANNELS = 4
CROP = (16, 16)
BATCH_SIZE = 4

# Causal layouts for bases with fewer than the usual 4 levels (a level per channel multiplier).
_LAYOUTS = {
    # 4x time, 2x space: the least to compile.
    2: dict(
        encoder=dict(blocks=("3d",) * 2, downsample=("conv3d:st", "conv3d:t")),
        decoder=dict(blocks=("3d",) * 2, upsample=("d2s:st", "d2s:t"), num_res_blocks=1),
    ),
    # 4x time, 4x space.
    3: dict(
        encoder=dict(blocks=("3d",) * 3, downsample=("conv3d:s", "conv3d:st", "conv3d:t")),
        decoder=dict(blocks=("3d",) * 3, upsample=("", "d2s:st", "d2s:st")),
    ),
}


def tiny_model_config(
    channel_multipliers=(1, 1, 1, 1), *, attention: bool = False, **overrides
) -> ml_collections.ConfigDict:
  """The ProMAG base at test scale: widths 8·`channel_multipliers` (one level each; 2 and 3
  levels get the layouts above), one encoder res block, 4 groups, 4 latent channels.

  `attention`: keep the mid-block attention (off by default: it is the slowest part to compile).
  `overrides` are merged in last (`ConfigDict.update`: nested dicts update nested fields).
  """
  config = architectures.promag_base(
      z_dim=LATENT_CHANNELS,
      base_channels=WIDTH,
      channel_multipliers=channel_multipliers,
      num_res_blocks=1,
      num_groups=NUM_GROUPS,
  )
  config.update(_LAYOUTS.get(len(channel_multipliers), {}))
  if not attention:
    config.encoder.mid_attention = config.decoder.mid_attention = "none"
  config.update(overrides)
  return config


def shrink_model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A shipped model config (its growth, freeze and layout settings kept) at the widths of
  `tiny_model_config()`, one res block per level on both sides, no attention; in place."""
  config.base_channels = WIDTH
  config.channel_multipliers = (1,) * len(config.channel_multipliers)
  config.num_groups = NUM_GROUPS
  config.z_channels = config.latent_channels = LATENT_CHANNELS
  for side in (config.encoder, config.decoder):
    side.num_res_blocks = 1
    side.mid_attention = "none"
  return config


def tiny_train_config(
    config: ml_collections.ConfigDict | None = None,
    *,
    steps: int = 6,
    num_frames: int = 5,
    num_clips: int = 64,
    eval_clips: int = 2,
    learning_rate: float | None = 3e-3,
) -> ml_collections.ConfigDict:
  """`config` (default: `default_config()` with `tiny_model_config()`) as a test-scale run, in
  place: `steps` steps on `num_clips` synthetic 16² clips of `num_frames` frames, batch 4, log
  every step, no periodic eval, checkpoint or progress line (callers set those they test), no
  perceptual or GAN loss, data parallel over the 4 fake devices.

  `learning_rate`: with a 2-step warmup, so a few steps move the loss; None keeps the config's
  schedule (a shipped config tested as it is).
  """
  if config is None:
    config = default_config()
    config.model = tiny_model_config()
  config.total_steps = steps
  config.log_every = 1
  config.eval_every = config.checkpoint_every = 1000
  config.progress_every_seconds = 1000.0
  config.data.update(
      source="synthetic",
      num_frames=num_frames,
      crop_size=CROP,
      batch_size=BATCH_SIZE,
      synthetic_num_clips=num_clips,
      resize_short_side=0,
      frame_stride=1,
      num_workers=0,
  )
  config.loss.update(perceptual_weight=0.0, gan_weight=0.0)
  if learning_rate is not None:
    config.optimizer.update(learning_rate=learning_rate, warmup_steps=2)
  config.eval.num_clips = eval_clips
  # Data parallel: XLA compiles the tiny train step in 16 s on this mesh and in 29 s on
  # data=2 x fsdp=2 (2-core CPU); the tests about FSDP layouts set fsdp=2.
  config.mesh.update(data=4, fsdp=1)
  return config


def shipped_run_config(name: str, steps: int, num_frames: int = 9) -> ml_collections.ConfigDict:
  """`bootvae_jax/configs/<name>.py` trained as it is (model, losses, schedule) for `steps` steps
  on 4 synthetic clips, evaluated (1 clip) and checkpointed at the last step."""
  config = importlib.import_module(f"bootvae_jax.configs.{name}").get_config()
  config = tiny_train_config(
      config, steps=steps, num_frames=num_frames, num_clips=4, eval_clips=1, learning_rate=None
  )
  config.eval_every = config.checkpoint_every = steps
  return config


# The scaling factor `train_image_vae` gives its model: distinct from every default, so that a
# test sees it travel (into checkpoints, loaded models, grown runs).
IMAGE_VAE_SCALING_FACTOR = 0.5


def train_image_vae(workdir: str) -> str:
  """`workdir` holding configs/image_vae_tiny.py trained for 2 steps on 1-frame clips."""
  # Imported here: the trainer pulls in the metric writers, which only training tests need.
  from bootvae_jax.training import trainer  # pylint: disable=g-import-not-at-top

  config = shipped_run_config("image_vae_tiny", 2, num_frames=1)
  config.model.scaling_factor = IMAGE_VAE_SCALING_FACTOR
  trainer.train_and_evaluate(config, workdir)
  return workdir
