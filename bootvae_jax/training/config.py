"""The full training config: every field a `bootvae_jax/configs/*.py` file may set, and its
validation.

`bootvae_jax/configs/*.py` start from `default_config()` and change what their experiment needs; any
field can then be overridden on the command line (`--config.total_steps=20`). `validate`
runs before any compute and names the offending field in every error.
"""

from __future__ import annotations

import os
import re

import ml_collections

from bootvae_jax import models
from bootvae_jax.cli import UserError
from bootvae_jax.core import sharding
from bootvae_jax.core import tpu_specs
from bootvae_jax.losses import compat
from bootvae_jax.models import autoencoder
from bootvae_jax.models import init as init_lib
from bootvae_jax.models import progressive


def default_config() -> ml_collections.ConfigDict:
  from bootvae_jax.data import config as data_config  # late: the data package is heavy

  config = ml_collections.ConfigDict()
  config.name = "train"
  config.seed = 0
  config.total_steps = 1000
  config.log_every = 10
  config.eval_every = 200
  config.checkpoint_every = 200
  config.keep_checkpoints = 3
  # Stop (error, exit non-zero, no checkpoint) after this many non-finite updates in a row
  # (each is skipped by the optimizer); 0 = never stop.
  config.max_consecutive_nonfinite = 20
  config.progress_every_seconds = 10.0

  config.model = autoencoder.default_model_config()
  config.data = data_config.default_config()

  config.optimizer = ml_collections.ConfigDict(
      dict(
          learning_rate=1e-4,
          warmup_steps=100,
          end_learning_rate_ratio=0.1,
          # The cosine ends here and the end rate holds after (0: at total_steps). A finished
          # run continued at its final rate keeps its old total_steps here.
          decay_steps=0,
          b1=0.9,
          b2=0.99,
          eps=1e-8,
          weight_decay=0.01,
          grad_clip_norm=1.0,
          ema_decay=0.999,
          # Lower-level (frozen by default) parameters can instead be fine-tuned at a smaller rate.
          finetune_learning_rate_multiplier=0.0,
          # Gradient accumulation: each step's batch runs as this many microbatches, their
          # gradients averaged into one update (the same update; one microbatch's activations).
          microbatches=1,
      )
  )
  config.loss = ml_collections.ConfigDict(
      dict(
          l1_weight=1.0,
          l2_weight=0.0,
          kl_weight=1e-6,
          perceptual_weight=0.0,
          perceptual_frames=2,
          gan_weight=0.0,
          gan_start_step=0,
          adaptive_gan_weight=True,
          max_adaptive_weight=1e4,
          lecam_weight=0.0,
          lecam_decay=0.999,
      )
  )
  config.discriminator = ml_collections.ConfigDict(
      dict(
          base_channels=64,
          num_layers=3,
          learning_rate=1e-4,
          b1=0.5,
          b2=0.9,
          weight_decay=0.0,
      )
  )
  # Regexes over '/'-joined parameter paths, each matching a whole path (e.g.
  # "encoder/down/0/.*"; the rule of `loading.path_matches`, shared with
  # init_checkpoint.mapping and exclude): no gradients, no optimizer state. ProMAG stages put
  # the lower level here.
  config.freeze = ()
  # Mesh axis sizes (core/sharding.py): dcn_data splits the batch across slices (DCN); data,
  # fsdp and spatial live inside a slice, one of them -1 to take the devices left.
  config.mesh = ml_collections.ConfigDict(dict(dcn_data=1, data=-1, fsdp=1, spatial=1))
  # Every logical axis (parameters and activations) → a mesh axis, a tuple of them, or None.
  config.sharding_rules = sharding.DEFAULT_RULES
  # The TPU slice this config is sized for ("v5e-16", "v5p-8", ...; "" = none): the default of
  # `python -m bootvae_jax.aot`, which compiles the step for it and checks it fits its HBM.
  config.target_topology = ""
  config.init_checkpoint = ml_collections.ConfigDict(
      dict(
          # A previous stage's workdir (or checkpoint step dir) whose parameters seed this model.
          path="",
          step=-1,
          # (model-path regex, checkpoint-path template) pairs over '/'-joined paths: exactly the
          # parameters a regex fully matches are restored, from the path the template gives
          # (re.Match.expand). Empty = every parameter from its own path.
          mapping=(),
          # Regexes over source paths dropped on purpose (e.g. the previous stage's head); every
          # other source parameter must land in the model.
          exclude=(),
          # "tail" | "centre" | "average": `path` is an image VAE (diffusers folder or image-VAE
          # workdir) inflated onto the model's base (models/init.py); "" = `path` is a workdir.
          inflate="",
      )
  )
  # CV-VAE latent-compatibility regularisers (losses/compat.py); off by default.
  config.compat = compat.default_config()
  # crop_size: () evaluates centre crops of data.crop_size; (H, W) another size.
  # at_start: also evaluate before the first step (what an initialisation alone gives).
  config.eval = ml_collections.ConfigDict(
      dict(num_clips=4, num_png_frames=4, crop_size=(), at_start=False)
  )
  return config


def _validate_growth_restore(config: ml_collections.ConfigDict) -> None:
  """A stage with `growth.init='from_lower'` must restore the lower level's head too."""
  if not progressive.starts_from_lower(config.model) or not config.model.growth.levels:
    return
  mapping = {tuple(m) for m in config.init_checkpoint.mapping}
  if not config.init_checkpoint.path or not set(progressive.HEAD_MAPPING) <= mapping:
    raise UserError(
        "model.growth.init='from_lower' starts the new level from the lower level's head, but"
        " config.init_checkpoint does not restore it (needs a path and progressive.HEAD_MAPPING"
        " in its mapping): pass it to the stage config (--config=configs/promag_8x.py:from_lower)"
        " or call stages.use_stage_restore_rules(config) after setting growth.init"
    )


def validate(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """Raises ValueError before any compute for a config that cannot run."""
  from bootvae_jax.data import config as data_config

  for field in ("total_steps", "log_every", "eval_every", "checkpoint_every"):
    if int(config[field]) <= 0:
      raise UserError(f"config.{field}={config[field]} must be a positive integer")
  if int(config.optimizer.get("decay_steps", 0)) < 0:
    raise UserError(
        f"config.optimizer.decay_steps={config.optimizer.decay_steps} must be >= 0"
        " (0 = decay over total_steps)"
    )
  microbatches = config.optimizer.get("microbatches", 1)
  if not isinstance(microbatches, int) or microbatches < 1:
    raise UserError(f"config.optimizer.microbatches={microbatches!r} must be a positive int")
  if int(config.data.batch_size) % microbatches:
    raise UserError(
        f"config.optimizer.microbatches={microbatches} must divide"
        f" data.batch_size={config.data.batch_size}"
    )
  if int(config.get("max_consecutive_nonfinite", 0)) < 0:
    raise UserError(
        f"config.max_consecutive_nonfinite={config.max_consecutive_nonfinite} must be >= 0"
        " (0 = never stop)"
    )
  models.validate_model_config(config.model)
  sharding.validate(config.mesh, config.sharding_rules)
  temporal, spatial = models.compression_factors(config.model)  # growth-aware: 1+8k, 1+16k
  data_config.validate(config.data, temporal_factor=temporal, spatial_factor=spatial)
  if eval_crop := tuple(config.eval.get("crop_size", ())):
    if len(eval_crop) != 2:
      raise UserError(f"config.eval.crop_size={eval_crop} must be (height, width) or ()")
    message = autoencoder.frame_size_error(
        *eval_crop, spatial, what="config.eval.crop_size=", size="({}, {})"
    )
    if message is not None:
      raise UserError(message)
  for pattern in config.freeze:
    try:
      re.compile(pattern)
    except re.error as e:
      raise UserError(f"config.freeze entry {pattern!r} is not a valid regex: {e}") from e
  if config.model.dtype not in ("float32", "bfloat16"):
    raise UserError(f"config.model.dtype={config.model.dtype!r}; use float32 or bfloat16")
  _validate_compat(config)
  inflate = config.init_checkpoint.get("inflate", "")
  if inflate and inflate not in init_lib.INFLATION_MODES:
    raise UserError(
        f"config.init_checkpoint.inflate={inflate!r}; use '' or one of"
        f" {init_lib.INFLATION_MODES}"
    )
  if inflate and not config.init_checkpoint.path:
    raise UserError(
        "config.init_checkpoint.inflate needs config.init_checkpoint.path (the"
        " image VAE: a diffusers folder or an image-VAE workdir)"
    )
  _validate_growth_restore(config)
  if config.get("target_topology", ""):
    tpu_specs.resolve(config.target_topology)  # a UserError listing the known slices
  if config.loss.perceptual_weight > 0 and config.model.out_channels != 3:
    raise UserError("config.loss.perceptual_weight needs RGB output (model.out_channels=3)")
  if workdir is not None:
    _check_workdir(workdir)


def _validate_compat(config: ml_collections.ConfigDict) -> None:
  cfg = config.get("compat")
  if cfg is None:
    return
  for name in ("decoder_weight", "encoder_weight"):
    if cfg[name] < 0:
      raise UserError(f"config.compat.{name}={cfg[name]} must be >= 0")
  if cfg.mapping not in compat.MAPPINGS:
    raise UserError(f"config.compat.mapping={cfg.mapping!r}; use one of {compat.MAPPINGS}")
  if compat.enabled(cfg) and not cfg.image_vae:
    raise UserError(
        "config.compat.decoder_weight / encoder_weight need config.compat.image_vae"
        " (a diffusers VAE folder or an image-VAE workdir)"
    )
  if cfg.learned_logvar and not cfg.decoder_weight > 0:
    raise UserError(
        "config.compat.learned_logvar weighs the decoder-side term; set"
        " config.compat.decoder_weight > 0"
    )


def _check_workdir(workdir: str) -> None:
  if "://" in workdir:  # a URL (gs://...): checked by its first write, never made local
    return
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UserError(f"--workdir={workdir}: {probe} exists and is not a directory")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir}: {probe} is not writable")
