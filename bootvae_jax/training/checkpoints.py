"""Orbax checkpoints: train state + data position + the run's config; loading a trained model.

A step directory holds three items: `state` (the whole `TrainState`, stored per array, so it
restores onto any mesh, device count or process count), `data` (JSON: the global index of the
next training example and the data counters, `TrainBatches.state()`, so a resumed run sees
exactly the examples an uninterrupted one would, on any topology) and `meta` (the run's full
config, step, name). Orbax writes each step into a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint behind; a step damaged later
(a truncated file, a deleted `_METADATA`, a missing commit marker) is detected on resume and
set aside (`Checkpoints.restore_latest`).

This module writes and resumes; the layout's read side is `bootvae_jax/loading.py`
(`checkpoint_steps`, `resolve_step`, `read_config`, `load_params`, `transfer_params` and
`load_model`, which is `bootvae_jax.load_model`), imported from there. One function per job:
  * `Checkpoints.save(...)` / `Checkpoints.restore_latest(...)`: the newest intact checkpoint,
    older ones as fallback;
  * `checkpoint_problem(workdir, step)` (from loading.py): why a step's files are incomplete;
  * `check_resume(workdir, step, config, state)`: refuses to resume with a config whose
    parameters do not fit the checkpoint;
  * `copy_latest(source, workdir)`: continue a finished run under another name.
Workdirs may be local paths or URLs such as gs:// (etils.epath, as orbax uses).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from bootvae_jax.cli import UserError
from bootvae_jax.loading import DamagedCheckpointError
from bootvae_jax.loading import checkpoint_dir
from bootvae_jax.loading import checkpoint_problem  # pylint: disable=unused-import
from bootvae_jax.loading import checkpoint_steps
from bootvae_jax.loading import path_string
from bootvae_jax.loading import quiet_checkpoint_reading
from bootvae_jax.loading import read_config
from bootvae_jax.loading import read_step
from bootvae_jax.loading import resolve_step
from bootvae_jax.loading import state_tree_metadata
from bootvae_jax.loading import step_dir


def copy_latest(source_workdir: str | os.PathLike, workdir: str | os.PathLike) -> int:
  """Copies the latest complete checkpoint of `source_workdir` into the empty `workdir` (local
  or gs:// paths, etils.epath) and returns its step: a run that starts there resumes that run's
  exact state (model, optimizer, data position), e.g. to continue a finished run under another
  name.

  The copy is assembled beside the checkpoints and renamed into place, so an interrupted copy
  leaves no half-written step."""
  step = resolve_step(source_workdir)
  if checkpoint_steps(workdir):
    raise FileExistsError(f"{workdir} already has checkpoints; not copying {source_workdir}'s")
  staging = epath.Path(workdir) / f"copying_{step}"
  staging.rmtree(missing_ok=True)  # a copy interrupted before
  _copy_tree(epath.Path(step_dir(source_workdir, step)), staging)
  epath.Path(checkpoint_dir(workdir)).mkdir(parents=True, exist_ok=True)
  staging.rename(step_dir(workdir, step))
  return step


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
  target.mkdir(parents=True, exist_ok=True)
  for entry in source.iterdir():
    if entry.is_dir():
      _copy_tree(entry, target / entry.name)
    else:
      entry.copy(target / entry.name)


class CheckpointSaveFailed(RuntimeError):
  """Orbax could not write a checkpoint (a file vanished or appeared under it: another writer
  in the workdir despite its lock, a filesystem fault). Not a user error: a bug or a fault to
  report, so the command lines keep the traceback (the OSError's path is orbax's, not one the
  user gave)."""


class DamagedCheckpointsError(UserError):
  """Checkpoints exist but none of them restores (command lines: one line, exit 2)."""


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any JAX process (every process calls this together)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as JSON data (tuples become lists), the form checkpoints store it in."""
  return json.loads(config.to_json_best_effort())


class Checkpoints:
  """`CheckpointManager` for one workdir (`<workdir>/checkpoints/<step>/{state,data,meta}`)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.workdir = workdir
    self.directory = checkpoint_dir(workdir)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        ),
    )

  def latest_step(self) -> int | None:
    """The latest complete step (`checkpoint_steps`), None before the first save."""
    steps = checkpoint_steps(self.workdir)
    return steps[-1] if steps else None

  def save(
      self,
      step: int,
      state,
      *,
      batches=None,
      config: ml_collections.ConfigDict | None = None,
      meta: Mapping[str, Any] | None = None,
      force: bool = False,
  ) -> None:
    """Saves `state` (+ the iterator position of `batches`) with `config` in its metadata,
    which `read_config` / `load_model` read back."""
    meta = dict(meta or {}, step=int(step))
    if config is not None:
      meta["config"] = config_json(config)
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if batches is not None:  # one JSON for all processes (written by process 0)
      items["data"] = ocp.args.JsonSave(batches.state())
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except OSError as error:
      raise CheckpointSaveFailed(f"saving checkpoint {step} in {self.directory} failed") from error

  def restore(self, step: int, abstract_state, shardings, *, batches=None):
    """The state at `step`, placed with `shardings` (any mesh: orbax reads each array's
    slices for the new layout); moves `batches` to the checkpoint's data position."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    items = dict(state=ocp.args.StandardRestore(target))
    data_dir = epath.Path(step_dir(self.workdir, step)) / "data"
    # Checkpoints of earlier versions hold grain's per-process iterator state instead.
    legacy_data = any(data_dir.glob("process_*.json")) if data_dir.exists() else False
    if batches is not None and data_dir.exists() and not legacy_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if batches is not None:
      if "data" in items:
        batches.restore(restored.data)
      else:
        # Every step reads one global batch, so the position is step × batch size.
        logging.warning(
            "checkpoint %d stores no global data position; continuing the data at example"
            " %d (step × data.batch_size)",
            step,
            step * batches.batch_size,
        )
        batches.restore({"examples": step * batches.batch_size})
    return restored.state

  def restore_latest(
      self,
      abstract_state,
      shardings,
      *,
      batches=None,
      check: Callable[[int], None] | None = None,
  ) -> tuple[int | None, Any]:
    """Restores the newest intact checkpoint: (step, state), or (None, None) if there is none.

    Steps are tried newest first. One whose files are incomplete (`checkpoint_problem`) or
    that fails to read gets a one-line warning naming it and the reason; once an older one
    restored, the damaged ones are renamed `<step>.damaged` (kept for inspection, out of
    orbax's view so that the run can save those steps again). On several processes, a step
    counts as damaged when it fails on any of them, so all restore the same step.

    Args:
      abstract_state: the `TrainState` (or its `jax.ShapeDtypeStruct`s) to restore into.
      shardings: where each array goes.
      batches: `TrainBatches` to move to the checkpoint's data position.
      check: called with a step before reading it (e.g. `check_resume`); its errors propagate.

    Raises:
      DamagedCheckpointsError: checkpoints exist but none of them can be read.
    """
    damaged = []
    # An abandoned read keeps raising on tensorstore's threads for a while: the hooks that
    # drop that noise stay until every step was tried, then are put back.
    with quiet_checkpoint_reading() as abandoned:
      for step in reversed(checkpoint_steps(self.workdir)):
        problem, state = None, None

        def read(step=step):
          if check is not None:
            check(step)
          return self.restore(step, abstract_state, shardings, batches=batches)

        try:
          # Whatever a damaged file raises (tensorstore, orbax, json), try the one before.
          state = read_step(self.workdir, step, read, abandoned)
        except DamagedCheckpointError as error:
          problem = error.reason
        if any_process(problem is not None):
          problem = problem or "it failed to read on another process"
          logging.warning(
              "checkpoint %s is damaged (%s); trying the one before it",
              step_dir(self.workdir, step),
              problem,
          )
          damaged.append((step, problem))
          continue
        self._set_aside([s for s, _ in damaged])
        return step, state
    if damaged:
      raise DamagedCheckpointsError(
          f"no intact checkpoint in {self.directory}: "
          + "; ".join(f"step {s}: {p}" for s, p in damaged)
          + ". Move the directory away (or use a new --workdir) to start over."
      )
    return None, None

  def _set_aside(self, steps: list[int]) -> None:
    """Renames damaged step directories to `<step>.damaged` (process 0; all wait)."""
    if not steps:
      return
    if jax.process_index() == 0:
      for step in steps:
        source = epath.Path(step_dir(self.workdir, step))
        target, n = source.parent / f"{step}.damaged", 1
        while target.exists():
          target, n = source.parent / f"{step}.damaged{n}", n + 1
        source.rename(target)
        logging.warning("set aside damaged checkpoint %s as %s", source, target.name)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices("bootvae_jax: damaged checkpoints set aside")
    self.manager.reload()

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except OSError as error:  # an asynchronous save's failure surfaces here
      raise CheckpointSaveFailed(f"a checkpoint save in {self.directory} failed") from error

  def close(self) -> None:
    self.manager.close()


# ----------------------------------------------------------------------------------------------
# Resuming.


_RESUMED_TREES = ("params", "frozen", "disc_params")


def _shapes(tree, prefix: str) -> dict[str, tuple[int, ...]]:
  if tree is None:
    return {}
  if isinstance(tree, nnx.State):
    return {f"{prefix}/{path_string(p)}": tuple(v.shape) for p, v in tree.flat_state()}
  out = {}
  for k, v in (tree.items() if isinstance(tree, Mapping) else ()):
    out.update(_shapes(v, f"{prefix}/{k}"))
  if not isinstance(tree, Mapping) and hasattr(tree, "shape"):
    out[prefix] = tuple(tree.shape)
  return out


def config_differences(
    saved: Mapping[str, Any],
    new: Mapping[str, Any],
    prefix: str = "",
    *,
    skip_new_fields: bool = False,
) -> list[str]:
  """'field: value there, value here' for every leaf field two JSON configs disagree on;
  `skip_new_fields`: not for fields the saved config lacks (added to the code since)."""
  out = []
  keys = set(saved) if skip_new_fields else set(saved) | set(new)
  for key in sorted(keys):
    a, b = saved.get(key), new.get(key)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out.extend(config_differences(a, b, f"{prefix}{key}.", skip_new_fields=skip_new_fields))
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
  return out


def check_resume(
    workdir: str | os.PathLike, step: int, config: ml_collections.ConfigDict, state
) -> None:
  """Raises `UserError` unless the checkpoint at `step` can be resumed by `config`'s state
  (`DamagedCheckpointError` when its metadata does not read).

  Compared: every trained, frozen and discriminator parameter's path and shape (what
  `config.model`, `config.freeze`, the fine-tuning switch and the GAN decide). Anything else
  (steps, learning rates, data, logging) may change on resume. The error names the first
  mismatched parameter and the config fields that differ from the checkpoint's.
  """
  tree = read_step(workdir, step, lambda: state_tree_metadata(workdir, step))
  stored = {
      re.sub(r"/value$", "", k): v
      for name in _RESUMED_TREES
      for k, v in _shapes(tree.get(name), name).items()
  }
  expected = {
      k: v for name in _RESUMED_TREES for k, v in _shapes(getattr(state, name), name).items()
  }
  problems = [
      f"{k} is in the checkpoint but not in this config's model"
      for k in sorted(set(stored) - set(expected))
  ]
  problems += [f"{k} is not in the checkpoint" for k in sorted(set(expected) - set(stored))]
  problems += [
      f"{k} has shape {stored[k]} in the checkpoint but {expected[k]} here"
      for k in sorted(set(stored) & set(expected))
      if stored[k] != expected[k]
  ]
  if not problems:
    return
  try:
    differences = config_differences(config_json(read_config(workdir, step)), config_json(config))
  except FileNotFoundError:
    differences = []
  hint = (
      (
          f"; the config differs from the checkpoint's in {len(differences)} fields: "
          + "; ".join(differences[:12])
      )
      if differences
      else ""
  )
  raise UserError(
      f"--workdir={workdir} holds a checkpoint (step {step}) this config cannot resume:"
      f" {problems[0]} ({len(problems)} parameter differences){hint}. Resume with the"
      " checkpoint's model, freeze and GAN settings, or use a new --workdir."
  )
