"""Runs that experiments train once and reuse: train or resume a run directory unless it is
done, refuse one trained with another config, and read back what the trainer logged.

A run directory holds the trainer's checkpoints and metrics.jsonl plus `timing.json`:
{"wall_s", "steps", "finished", "reached"}, the training wall time summed over every
invocation that trained it and whether the last one reached the final step (a SIGTERM or
Ctrl-C makes the trainer save and return early: not finished, a rerun resumes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Any

from bootvae_jax.cli import UserError

# The config fields (dotted paths) that decide what a run learns: a run trained with other
# values is not reused (resumed or evaluated) under a changed config (fields added to the code
# since the run are not compared).
RUN_DEFINING_FIELDS = (
    "model",
    "optimizer",
    "loss",
    "total_steps",
    "seed",
    "freeze",
    "data.frame_stride",
)

TIMING_FILE = "timing.json"


@dataclasses.dataclass
class RunTiming:
  """A run's `timing.json`."""

  wall_s: float  # training wall time, summed over the invocations that trained the run
  steps: int  # the run's total steps
  finished: bool  # the last invocation reached `steps`
  reached: int | None = None  # the step the last invocation ended at

  @classmethod
  def read(cls, run_dir: str, steps: int) -> RunTiming:
    """The run's timing.json; a new run's (nothing trained yet) without one."""
    timing = cls(wall_s=0.0, steps=int(steps), finished=False)
    path = os.path.join(run_dir, TIMING_FILE)
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      fields = {f.name for f in dataclasses.fields(cls)}
      timing = dataclasses.replace(timing, **{k: v for k, v in saved.items() if k in fields})
    return timing

  def write(self, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, TIMING_FILE), "w") as f:
      json.dump(dataclasses.asdict(self), f)


def run_defining(config_json: dict[str, Any]) -> dict[str, Any]:
  """The `RUN_DEFINING_FIELDS` of a JSON config, nested as there."""
  out = {}
  for field in RUN_DEFINING_FIELDS:
    *parents, leaf = field.split(".")
    source, target = config_json, out
    for parent in parents:
      source, target = source.get(parent, {}), target.setdefault(parent, {})
    if leaf in source:
      target[leaf] = source[leaf]
  return out


def continues_finished_run(saved: dict[str, Any], new: dict[str, Any], step: int) -> bool:
  """Whether config `new` continues the finished run of config `saved` (both JSON, the
  checkpoint at `step`) at its final learning rate: more steps, with the schedule ending where
  the run ended (`optimizer.decay_steps`), so its first `step` steps are the run's."""
  return (
      saved.get("total_steps") == step < new["total_steps"]
      and new["optimizer"].get("decay_steps") == step
  )


def check_same_run(saved_config, config, step: int, source: str) -> None:
  """Raises a UserError if `config` differs from `saved_config` (the config of `source`'s
  checkpoint at `step`) in a `RUN_DEFINING_FIELDS` field, unless it continues that finished
  run (`continues_finished_run`)."""
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top

  saved, new = (run_defining(checkpoints.config_json(c)) for c in (saved_config, config))
  if continues_finished_run(saved, new, step):  # the same run up to its last step
    for fields in (saved, new):
      del fields["total_steps"]
      fields["optimizer"].pop("decay_steps", None)
  if differences := checkpoints.config_differences(saved, new, skip_new_fields=True):
    raise UserError(
        f"{source} was trained with another config ({len(differences)} differences, e.g."
        f" {differences[0]}); move it away to retrain it, or use another --workdir"
    )


def train_or_reuse(config, run_dir: str, continue_from: str | None = None) -> RunTiming:
  """Trains `config` in `run_dir` (resuming a started run) unless it is finished; a new run
  with `continue_from` starts from that run's final checkpoint (`continues_finished_run`).

  Raises a UserError, before any training or copying, if `run_dir` (or, for a new run,
  `continue_from`) holds a checkpoint of another run (`check_same_run`): the experiment's
  settings changed since."""
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import trainer  # pylint: disable=g-import-not-at-top

  latest, source = _latest_step(run_dir), run_dir
  if latest is None and continue_from:  # checked before anything is copied
    latest, source = checkpoints.resolve_step(continue_from), continue_from
  if latest is not None:
    check_same_run(checkpoints.read_config(source), config, latest, source)
  if source != run_dir:
    checkpoints.copy_latest(source, run_dir)
  timing = RunTiming.read(run_dir, config.total_steps)
  if timing.finished and latest == config.total_steps:
    return timing
  start = time.perf_counter()
  trainer.train_and_evaluate(config, run_dir)
  reached = _latest_step(run_dir)
  timing.wall_s = round(timing.wall_s + time.perf_counter() - start, 1)
  timing.finished = reached == config.total_steps
  timing.reached = reached
  timing.write(run_dir)
  return timing


def _latest_step(run_dir: str) -> int | None:
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top

  steps = checkpoints.checkpoint_steps(run_dir)
  return steps[-1] if steps else None


def read_metrics(run_dir: str, key: str) -> list[tuple[int, float]]:
  """(step, value) of `key` in the run's metrics.jsonl, sorted by step; a step logged twice (a
  resumed run) keeps its last value. Empty without the file."""
  points = {}
  path = os.path.join(run_dir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        if key in row:
          points[int(row["step"])] = float(row[key])
  return sorted(points.items())


def eval_curve(run_dir: str) -> list[tuple[int, float]]:
  """(step, held-out PSNR) of the trainer's periodic evaluation."""
  return read_metrics(run_dir, "eval/psnr")


def machine_description() -> str:
  """The machine that wall times are measured on, in one line."""
  import jax  # pylint: disable=g-import-not-at-top

  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  cpu = platform.processor() or platform.machine()
  device = jax.devices()[0].device_kind if jax.default_backend() != "cpu" else cpu
  return (
      f"{platform.system()} {device}, {os.cpu_count()} CPU cores (load avg {load:.1f} at"
      f" start), jax {jax.__version__} {jax.default_backend()}"
  )
