"""The training loop: one readable function from a config to checkpoints, metrics and PNGs.

    train_and_evaluate(config, workdir)

writes into `workdir` (a local path or a URL such as gs://...; every file goes through
etils.epath or, for TensorBoard, tf.io.gfile): `checkpoints/` (orbax; each checkpoint stores
the run's config, read back by `bootvae_jax.load_model`), TensorBoard events (clu metric
writers), `metrics.jsonl` (one JSON object per logged step) and `eval/step_<N>.png`
(ground-truth frames above reconstructed frames, then the |frame differences| of each).

Rerunning resumes from the newest intact checkpoint (damaged newer ones are reported and set
aside), on any topology; a config whose parameters do not fit that checkpoint is refused
before anything is written. SIGTERM / SIGINT end the run after the current step with a
checkpoint of that step (`preemption.py`); a run whose last `config.max_consecutive_nonfinite`
updates were all non-finite, or whose last update was non-finite at `config.total_steps`, stops
with `TrainingDiverged` without saving. One run at a time: `workdir_lock.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath

from bootvae_jax import data as data_lib
from bootvae_jax import cli
from bootvae_jax.cli import UserError
from bootvae_jax.core import visualize
from bootvae_jax.losses import compat
from bootvae_jax.losses import perceptual
from bootvae_jax.training import checkpoints as checkpoints_lib
from bootvae_jax.training import config as config_lib
from bootvae_jax.core import sharding
from bootvae_jax.training import preemption
from bootvae_jax.training import stages
from bootvae_jax.training import train_state as train_state_lib
from bootvae_jax.training import train_step as train_step_lib
from bootvae_jax.training import workdir_lock


class TrainingDiverged(UserError):
  """`config.max_consecutive_nonfinite` updates in a row were non-finite: the config (its
  learning rate, warmup, data) needs changing, so command lines print it as one line, exit 2."""


class MetricsLog:
  """Appends one JSON object per logged step to `<workdir>/metrics.jsonl` (process 0).

  A run resumed from step `start` first drops the rows a previous attempt wrote after that
  checkpoint (they are about to be written again): the file is rewritten to a temporary one
  and renamed over the old, so it is never half-written.
  """

  def __init__(self, workdir: str, start: int = 0):
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.enabled = jax.process_index() == 0
    if self.enabled and self.path.exists():
      self._truncate(start)

  def _truncate(self, start: int) -> None:
    lines = self.path.read_text().splitlines()
    # Step `start`'s rows belong to its checkpoint; a fresh start (0) redoes everything. A
    # row cut short by a kill is dropped too.
    keep = [l for l in lines if start > 0 and (s := _row_step(l)) is not None and s <= start]
    if len(keep) == len(lines):
      return
    logging.info(
        "%s: dropping %d rows written after step %d", self.path, len(lines) - len(keep), start
    )
    temporary = self.path.parent / f"{self.path.name}.tmp"
    temporary.write_text("".join(l + "\n" for l in keep))
    temporary.replace(self.path)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")


def _row_step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def evaluate(
    eval_fn, state, clips: np.ndarray, nets: train_step_lib.LossNets | None = None
) -> tuple[dict[str, float], np.ndarray]:
  """Mean PSNR/SSIM, PSNR per phase of the latent group (`psnr_phase_<p>`) and flicker (and
  compatibility PSNR with a CV-VAE image VAE) of the held-out clips with the trained parameters
  (`eval/psnr`, ...) and with their EMA (`eval_ema/psnr`, ...); and the reconstructions of the
  trained parameters."""
  clips = jnp.asarray(clips)
  scores, recon = {}, None
  for prefix, params in (("eval", state.params), ("eval_ema", state.ema_params)):
    out, m = eval_fn(params, state.frozen, clips, nets)  # one compilation serves both
    scores.update({f"{prefix}/{k}": float(np.mean(v)) for k, v in jax.device_get(m).items()})
    recon = np.asarray(jax.device_get(out)) if recon is None else recon
  return scores, recon


def load_compat_image_vae(config: ml_collections.ConfigDict):
  """The frozen image VAE of `config.compat`, checked against the model. The video model
  inherits its latent scaling (`model.scaling_factor`, `model.shift_factor`): a compatible
  latent is meant to be scaled for diffusion exactly like the image latent."""
  from bootvae_jax import models  # pylint: disable=g-import-not-at-top
  from bootvae_jax import loading  # pylint: disable=g-import-not-at-top

  image_vae = loading.load_image_vae(config.compat.image_vae)
  _, spatial = models.compression_factors(config.model)
  compat.check_image_vae(image_vae, config.model, spatial)
  for name in ("scaling_factor", "shift_factor"):
    value = float(image_vae.config.get(name, 0.0))
    if float(config.model.get(name, 0.0)) != value:
      logging.info("model.%s = %g, from the image VAE %s", name, value, config.compat.image_vae)
    config.model[name] = value
  return image_vae


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_after_step: int | None = None
) -> train_state_lib.TrainState:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint if there is one.

  `stop_after_step` ends the run early (as a kill would: no checkpoint) after that step's work.

  Raises:
    TrainingDiverged: `config.max_consecutive_nonfinite` non-finite updates in a row; the
      checkpoints before them are kept, none is written after.
    checkpoints.DamagedCheckpointsError: the workdir has checkpoints and none can be read.
    workdir_lock.WorkdirLocked: another live run holds the workdir.
  """
  config_lib.validate(config, workdir)  # before any compute
  with _workdir_lock(workdir):  # one run per workdir, before anything in it is read or written
    return _train_locked(config, workdir, stop_after_step)


def _workdir_lock(workdir: str) -> contextlib.AbstractContextManager:
  """The workdir's lock (`workdir_lock.py`), taken by process 0 for the whole run; every
  process refuses together when it is held. An unreachable URL workdir is a user error."""
  lock, refusal = None, None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir)
    try:
      lock.acquire()
    except workdir_lock.WorkdirLocked as error:
      refusal = error
    except Exception as error:  # pylint: disable=broad-except
      # A URL's filesystem raises its own errors (TensorFlow's, gcsfs's) when unreachable.
      if "://" not in workdir or isinstance(error, cli.USER_ERRORS):
        raise
      refusal = UserError(f"--workdir={workdir} cannot be reached: {cli.one_line(str(error))}")
  if checkpoints_lib.any_process(refusal is not None):
    raise refusal or workdir_lock.WorkdirLocked(
        f"--workdir={workdir} is in use by another run (see process 0's error)"
    )
  return contextlib.closing(_Releasing(lock))


def _train_locked(config, workdir, stop_after_step):
  """`train_and_evaluate` once the workdir is this run's."""
  image_vae = None
  if config.compat.image_vae:  # trains with it when weighted; evaluates compatibility always
    image_vae = load_compat_image_vae(config)  # also sets the model's latent scaling
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s on %d devices (%s)", dict(mesh.shape), mesh.size, jax.default_backend())
  stop = preemption.StopSignal()  # from here on, SIGTERM / SIGINT end the run with a checkpoint
  try:
    return _train(config, workdir, mesh, image_vae, stop, stop_after_step)
  finally:
    stop.close()


def _train(config, workdir, mesh, image_vae, stop, stop_after_step):
  """`train_and_evaluate` after validation: resume or initialise, then the training loop."""
  resuming = bool(checkpoints_lib.checkpoint_steps(workdir))
  # A resumed state is never initialised: the checkpoint is read straight into its shardings.
  setup, state = train_state_lib.create_train_state(config, mesh, abstract=resuming)
  batches = data_lib.make_train_batches(config.data, mesh=mesh, seed=config.seed)
  start, ckpts = 0, None
  if resuming:  # before anything in the workdir is written
    ckpts = checkpoints_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
    abstract_state = state
    start, state = ckpts.restore_latest(
        abstract_state,
        setup.state_shardings,
        batches=batches,
        check=lambda step: checkpoints_lib.check_resume(workdir, step, config, abstract_state),
    )
    logging.info(
        "resuming from %s step %d (data at example %d)", ckpts.directory, start, batches.examples
    )
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if ckpts is None:
    ckpts = checkpoints_lib.Checkpoints(workdir, keep=config.keep_checkpoints)
    if config.init_checkpoint.path:
      state = stages.init_from_checkpoint(state, setup, config.init_checkpoint)

  lpips = perceptual.LPIPS.from_package() if config.loss.perceptual_weight else None
  nets = train_step_lib.LossNets(lpips=lpips, image_vae=image_vae)
  # Traced inside the mesh, the model's activations follow config.sharding_rules too.
  rules = config.sharding_rules
  step_fn = sharding.in_mesh(train_step_lib.jit_train_step(setup, nets), mesh, rules)
  eval_fn = sharding.in_mesh(train_step_lib.jit_eval_step(setup, nets=nets), mesh, rules)
  eval_data = config.data
  if config.eval.get("crop_size"):  # e.g. evaluate whole 64² frames of a model trained on 32²
    eval_data = ml_collections.ConfigDict(config.data.to_dict())
    eval_data.crop_size = tuple(config.eval.crop_size)
  # The evaluation index reads the same folder: its skipped files were warned about already.
  with _SkipWarnedOnce(getattr(batches, "skipped_files", ())):
    eval_clips = data_lib.make_eval_clips(eval_data, num_clips=config.eval.num_clips)

  # clu's TensorBoard writer takes URLs itself (tf.io.gfile).
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  log = MetricsLog(workdir, start)
  progress = periodic_actions.ReportProgress(
      num_train_steps=config.total_steps, writer=writer, every_secs=config.progress_every_seconds
  )
  pending: list[dict[str, Any]] = []
  interval_start, interval_steps = time.perf_counter(), 0
  # The latent scaling travels with every checkpoint (CV-VAE: the image VAE's).
  meta = dict(
      name=config.name,
      model=config.model.name,
      scaling_factor=float(config.model.scaling_factor),
      shift_factor=float(config.model.get("shift_factor", 0.0)),
  )
  streak = _NonfiniteStreak(int(config.get("max_consecutive_nonfinite", 0)))

  def run_eval(step):
    scores, recon = evaluate(eval_fn, state, eval_clips, nets)
    writer.write_scalars(step, scores)
    log.write(step, scores)
    grid = visualize.frames_grid(
        eval_clips[0], recon[0], config.eval.num_png_frames, frame_differences=True
    )
    if jax.process_index() == 0:
      visualize.save_png(grid, epath.Path(workdir) / "eval" / f"step_{step:07d}.png")
    writer.write_images(step, {"eval/reconstruction": grid[None]})
    logging.info("eval step %d: %s", step, scores)

  step = start
  checkpoint_due = False
  if step == 0 and config.eval.get("at_start", False):
    run_eval(0)  # the initialisation's scores (e.g. an inflated image VAE before training)
  try:
    while step < config.total_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, next(batches), nets)
      step += 1
      interval_steps += 1
      pending.append(metrics)
      progress(step)
      streak.check_previous(step, metrics)  # the previous step's, already computed

      if step % config.log_every == 0 or step == config.total_steps:
        host = jax.device_get(pending)
        scalars = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
        for counter in ("skipped_updates", "nonfinite_streak"):
          scalars[counter] = float(host[-1][counter])
        elapsed = time.perf_counter() - interval_start
        scalars["steps_per_sec"] = interval_steps / max(elapsed, 1e-9)
        scalars.update(batches.stats())
        writer.write_scalars(step, scalars)
        log.write(step, scalars)
        eta = (config.total_steps - step) / max(scalars["steps_per_sec"], 1e-9)
        logging.info(
            "step %d/%d loss %.4f %.2f steps/s ETA %.0fs",
            step,
            config.total_steps,
            scalars["loss"],
            scalars["steps_per_sec"],
            eta,
        )
        pending, interval_start, interval_steps = [], time.perf_counter(), 0

      if step % config.eval_every == 0 or step == config.total_steps:
        run_eval(step)

      stop_reason = stop.reason(step)  # every step, on every process
      checkpoint_due |= step % config.checkpoint_every == 0
      if checkpoint_due or step == config.total_steps or stop_reason is not None:
        # Never over a good checkpoint with a diverged state: a periodic checkpoint waits for
        # the end of a run of non-finite updates, the final one is not written from one (a
        # preemption one is: the rerun continues the streak and judges it).
        current_streak = streak.check(step, metrics)
        if current_streak and step == config.total_steps and stop_reason is None:
          streak.ended_diverged(step, current_streak)
        if current_streak and step < config.total_steps and stop_reason is None:
          logging.info("step %d: checkpoint postponed until an update is finite again", step)
        else:
          ckpts.save(
              step,
              state,
              batches=batches,
              config=config,
              meta=dict(meta, total_steps=config.total_steps),
          )
          checkpoint_due = False

      if stop_reason is not None:
        logging.warning(
            "stopping after step %d: %s; saved checkpoint %d of %s (data at example %d)."
            " Rerun the same command to continue.",
            step,
            stop_reason,
            step,
            ckpts.directory,
            batches.examples,
        )
        break
      if stop_after_step is not None and step >= stop_after_step:
        break
  finally:  # also on errors: a save in flight completes (async checkpointing)
    ckpts.wait()
    ckpts.close()
    writer.flush()
    batches.close()
  return state


class _SkipWarnedOnce(py_logging.Filter):
  """While open, drops the data sources' "skipping FILE: REASON" warnings of `skipped`."""

  def __init__(self, skipped):
    super().__init__()
    self.skipped = {(s.file, s.reason) for s in skipped}

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.msg == "skipping %s: %s" and tuple(record.args or ()) in self.skipped)

  def __enter__(self):
    py_logging.getLogger("absl").addFilter(self)
    return self

  def __exit__(self, *exc):
    py_logging.getLogger("absl").removeFilter(self)


class _Releasing:
  """`close()` releases a `WorkdirLock` (None on processes other than 0)."""

  def __init__(self, lock: workdir_lock.WorkdirLock | None):
    self.lock = lock

  def close(self) -> None:
    if self.lock is not None:
      self.lock.release()


class _NonfiniteStreak:
  """Raises `TrainingDiverged` once `limit` updates in a row were non-finite (0: never).

  Reads each step's `nonfinite_streak` metric one step late (`check_previous`: already
  computed, so the host never waits for the device), and the current one before a checkpoint
  (`check`).
  """

  def __init__(self, limit: int):
    self.limit = limit
    self._previous = None

  def check_previous(self, step: int, metrics) -> None:
    if not self.limit:  # nothing to stop for: only checkpoint steps read the streak
      return
    if self._previous is not None:
      self.check(step - 1, self._previous)
    self._previous = metrics

  def check(self, step: int, metrics) -> int:
    """The streak at `step` (from its metrics); raises once it reaches the limit."""
    count = int(jax.device_get(metrics["nonfinite_streak"]))
    if self.limit and count >= self.limit:
      first = step - count + 1
      message = (
          f"training diverged: the updates of steps {first}-{step} ({count} in a row,"
          f" config.max_consecutive_nonfinite={self.limit}) had non-finite gradients and were"
          " skipped; stopped without saving, so the checkpoints before them are kept. Lower"
          " config.optimizer.learning_rate, raise optimizer.warmup_steps or check the data,"
          " then rerun (it resumes from the last checkpoint)."
      )
      raise TrainingDiverged(message)  # the CLI prints it as its one error line
    return count

  def ended_diverged(self, step: int, count: int) -> None:
    """Raises `TrainingDiverged`: the run reached its last step inside a streak of `count`
    non-finite updates, so its final state is no trained model."""
    raise TrainingDiverged(
        f"training ended diverged: the last {count} updates (steps {step - count + 1}-{step}, the"
        f" end of config.total_steps={step}) had non-finite gradients and were skipped; the final"
        " checkpoint is not written from them, so the checkpoints before them are kept. Lower"
        " config.optimizer.learning_rate, raise optimizer.warmup_steps or check the data, then"
        " rerun with more config.total_steps (it resumes from the last checkpoint)."
    )
