"""Orbax checkpoints: train state + data position + the run's config; loading a trained model.

A step directory holds three items: `state` (the whole `TrainState`, stored per array, so it
restores onto any mesh, device count or process count), `data` (JSON: the global index of the
next training example and the data counters, `TrainBatches.state()`, so a resumed run sees
exactly the examples an uninterrupted one would, on any topology) and `meta` (the run's full
config, step, name). Orbax writes each step into a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint behind; a step damaged later
(a truncated file, a deleted `_METADATA`, a missing commit marker) is detected on resume and
set aside (`Checkpoints.restore_latest`).

One function per job:
  * `checkpoint_steps(workdir)`: the complete steps of a run (`resolve_step` picks one);
  * `checkpoint_problem(workdir, step)`: why a step's files are incomplete, or None;
  * `Checkpoints.restore_latest(...)`: the newest intact checkpoint, older ones as fallback;
  * `read_config(workdir, step)`: the config a checkpoint was trained with;
  * `load_model(workdir, step=None, ema=False)` → (model, config): the trained model, built
    abstractly from that config and filled from the checkpoint (`bootvae_jax.load_model`);
  * `check_resume(workdir, step, config, state)`: refuses to resume with a config whose
    parameters do not fit the checkpoint;
  * `load_params` / `transfer_params`: another run's parameters by path, without knowing its
    model (ProMAG stages carry the lower level into a bigger model with them).
Workdirs may be local paths or URLs such as gs:// (etils.epath, as orbax uses).
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import re
import sys
import threading
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from bootvae_jax.cli import UserError
from bootvae_jax.training.train_state import path_matches
from bootvae_jax.training.train_state import path_string


def _absolute(path: str | os.PathLike) -> str:
  """Local paths made absolute (orbax needs that); URLs (gs://...) as they are."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def checkpoint_dir(workdir: str | os.PathLike) -> str:
  return str(epath.Path(_absolute(workdir)) / "checkpoints")


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The complete checkpoint steps of a training workdir, ascending ([] if none).

  Orbax's own rule decides what is complete (an interrupted save is not listed).
  """
  directory = checkpoint_dir(workdir)
  if not epath.Path(directory).is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


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
  _copy_tree(epath.Path(_step_dir(source_workdir, step)), staging)
  epath.Path(checkpoint_dir(workdir)).mkdir(parents=True, exist_ok=True)
  staging.rename(_step_dir(workdir, step))
  return step


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
  target.mkdir(parents=True, exist_ok=True)
  for entry in source.iterdir():
    if entry.is_dir():
      _copy_tree(entry, target / entry.name)
    else:
      entry.copy(target / entry.name)


def resolve_step(workdir: str | os.PathLike, step: int | None = None) -> int:
  """`step` if the workdir has it; None (or a negative step) means the latest one."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"no checkpoint under {checkpoint_dir(workdir)}; is {workdir} a"
        " training workdir that reached its first checkpoint_every?"
    )
  if step is None or step < 0:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(
        f"no checkpoint of step {step} under {checkpoint_dir(workdir)};" f" available: {steps}"
    )
  return step


def _step_dir(workdir: str | os.PathLike, step: int) -> str:
  return str(epath.Path(checkpoint_dir(workdir)) / str(step))


# Files every complete step directory has (orbax writes the commit marker last).
_REQUIRED_FILES = (
    ("commit_success.txt", "no commit marker: the save did not finish"),
    ("state/_METADATA", "state/_METADATA is missing"),
    ("meta", "the meta item is missing"),
)


def checkpoint_problem(workdir: str | os.PathLike, step: int) -> str | None:
  """Why the checkpoint of `step` is incomplete (a file every complete one has is missing),
  or None. Damage inside a data file only shows when it is read (`restore_latest`)."""
  step_dir = epath.Path(_step_dir(workdir, step))
  for name, problem in _REQUIRED_FILES:
    if not (step_dir / name).exists():
      return problem
  return None


class DamagedCheckpointsError(UserError):
  """Checkpoints exist but none of them restores (command lines: one line, exit 2)."""


@contextlib.contextmanager
def _quiet_libraries():
  """Silences orbax / tensorstore / asyncio logging while a possibly damaged checkpoint is
  read: its failure is reported in one line by the caller, not as pages of tracebacks."""
  loggers = [py_logging.getLogger(name) for name in ("absl", "orbax", "asyncio", "jax")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(py_logging.CRITICAL + 1)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _one_line(error: BaseException) -> str:
  """The innermost cause's first line (orbax wraps tensorstore's precise error, e.g.
  `OUT_OF_RANGE: Error reading "params...": Requested byte range [..) is not valid`, in a
  message that prints the whole tensorstore spec)."""
  while error.__cause__ is not None or (
      error.__context__ is not None and not error.__suppress_context__
  ):
    error = error.__cause__ or error.__context__
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 400 else text[:400] + "..."


class _AbandonedReadErrors:
  """Drops what an abandoned checkpoint read keeps raising after the failure was reported.

  When one array of a step fails to read, orbax gives up and closes its event loop while
  tensorstore still completes the other reads on its own threads; their callbacks then raise
  `RuntimeError: Event loop is closed` (or the read error again), printed as hundreds of
  tracebacks. Once a read failed, these are dropped; any other error still reaches the
  previous hooks.
  """

  paths: set[str] = set()

  @classmethod
  def install(cls, step_dir: str) -> None:
    if not cls.paths:
      previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
      previous_thread = threading.excepthook
      sys.unraisablehook = lambda u: None if cls.is_noise(u.exc_value) else previous_unraisable(u)
      sys.excepthook = lambda t, v, tb: None if cls.is_noise(v) else previous_except(t, v, tb)
      threading.excepthook = lambda a: None if cls.is_noise(a.exc_value) else previous_thread(a)
    cls.paths.add(str(step_dir))

  @classmethod
  def is_noise(cls, error) -> bool:
    text = str(error)
    return (isinstance(error, RuntimeError) and text == "Event loop is closed") or any(
        path in text for path in cls.paths
    )


def _any_process(flag: bool) -> bool:
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
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, shardings, *, batches=None):
    """The state at `step`, placed with `shardings` (any mesh: orbax reads each array's
    slices for the new layout); moves `batches` to the checkpoint's data position."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    items = dict(state=ocp.args.StandardRestore(target))
    data_dir = epath.Path(_step_dir(self.workdir, step)) / "data"
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
    for step in reversed(checkpoint_steps(self.workdir)):
      problem = checkpoint_problem(self.workdir, step)
      state = None
      if problem is None:
        if check is not None:
          check(step)
        try:
          with _quiet_libraries():
            state = self.restore(step, abstract_state, shardings, batches=batches)
        except Exception as error:  # pylint: disable=broad-except
          # Whatever a damaged file raises (tensorstore, orbax, json), try the one before.
          _AbandonedReadErrors.install(_step_dir(self.workdir, step))
          problem = _one_line(error)
      if _any_process(problem is not None):
        problem = problem or "it failed to read on another process"
        logging.warning(
            "checkpoint %s is damaged (%s); trying the one before it",
            _step_dir(self.workdir, step),
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
        source = epath.Path(_step_dir(self.workdir, step))
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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


# ----------------------------------------------------------------------------------------------
# The run's config and its trained model.


def _without_retired_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` less the fields older runs stored that no longer mean anything, so their
  checkpoints keep loading: `model.conv_impl` (the conv kernel is now chosen by backend in
  `bootvae_jax/ops/`, never stored)."""
  if "model" in config and "conv_impl" in config.model:
    del config.model["conv_impl"]
  return config


def read_config(workdir: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
  """The full training config the checkpoint at `step` (None: latest) was saved with.

  Checkpoints written before configs were stored in them fall back to the run's
  `config.json` (which the trainer used to write), with a warning.
  """
  step = resolve_step(workdir, step)
  meta_dir = epath.Path(_step_dir(workdir, step)) / "meta"
  meta = {}
  if meta_dir.is_dir():
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir) or {}
  if "config" in meta:
    return _without_retired_fields(ml_collections.ConfigDict(meta["config"]))
  legacy = epath.Path(_absolute(workdir)) / "config.json"
  if legacy.is_file():
    logging.warning(
        "checkpoint %d of %s stores no config; using the legacy %s", step, workdir, legacy
    )
    return _without_retired_fields(ml_collections.ConfigDict(json.loads(legacy.read_text())))
  raise FileNotFoundError(
      f"the checkpoint of step {step} in {workdir} stores no config (it was"
      " saved without Checkpoints.save(config=...)) and there is no"
      " config.json beside it"
  )


def load_model(
    workdir: str | os.PathLike, step: int | None = None, ema: bool = False
) -> tuple[Any, ml_collections.ConfigDict]:
  """The trained model of a training run, and the config it was trained with.

  The model is built abstractly from the checkpoint's config (`nnx.eval_shape`: no random
  initialisation) and every parameter is filled from the checkpoint, or this raises.

  Args:
    workdir: the training workdir (local path or URL).
    step: checkpoint step; None for the latest.
    ema: the EMA of the trained parameters instead of the raw ones (frozen parameters are
      the same either way).

  Returns:
    (a `VideoAutoencoder` / `GrownAutoencoder`, the full training config).
  """
  from bootvae_jax import models  # pylint: disable=g-import-not-at-top

  step = resolve_step(workdir, step)
  config = read_config(workdir, step)
  model = nnx.eval_shape(lambda: models.build_model(config.model))
  params, filled = transfer_params(nnx.state(model, nnx.Param), load_params(workdir, step, ema=ema))
  missing = sorted({path_string(p) for p, _ in params.flat_state()} - set(filled))
  if missing:
    raise ValueError(
        f"the checkpoint of step {step} in {workdir} lacks {len(missing)}"
        f" parameters of the model its config builds, e.g. {missing[:5]}"
    )
  nnx.update(model, params)
  return model, config


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
  """Raises ValueError unless the checkpoint at `step` can be resumed by `config`'s state.

  Compared: every trained, frozen and discriminator parameter's path and shape (what
  `config.model`, `config.freeze`, the fine-tuning switch and the GAN decide). Anything else
  (steps, learning rates, data, logging) may change on resume. The error names the first
  mismatched parameter and the config fields that differ from the checkpoint's.
  """
  with _quiet_libraries():  # orbax warns that the item has no _CHECKPOINT_METADATA of its own
    tree = (
        ocp.PyTreeCheckpointer()
        .metadata(epath.Path(_step_dir(workdir, step)) / "state")
        .item_metadata.tree
    )
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
  raise ValueError(
      f"--workdir={workdir} holds a checkpoint (step {step}) this config cannot resume:"
      f" {problems[0]} ({len(problems)} parameter differences){hint}. Resume with the"
      " checkpoint's model, freeze and GAN settings, or use a new --workdir."
  )


# ----------------------------------------------------------------------------------------------
# Parameters of another run (stage transfer).


def _flatten(tree: Any, prefix: tuple = ()) -> dict[str, np.ndarray]:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (k,)))
  elif tree is not None:
    out[path_string(prefix)] = np.asarray(tree)
  return out


def load_params(
    path: str | os.PathLike, step: int | None = None, *, ema: bool = False
) -> dict[str, np.ndarray]:
  """All autoencoder parameters (trained and frozen) of a run, keyed by '/'-joined path.

  Args:
    path: a workdir, or one checkpoint step directory (`<workdir>/checkpoints/<step>`).
    step: which step of a workdir (None or -1: the latest).
    ema: take the EMA of the trained parameters instead of the raw ones.
  """
  path = _absolute(path)
  if (epath.Path(path) / "state").is_dir():
    state_dir = epath.Path(path) / "state"
  else:
    state_dir = epath.Path(_step_dir(path, resolve_step(path, step))) / "state"
  # Partial restore: only the parameter subtrees, as host numpy arrays (no optimizer state,
  # and no dependence on the mesh the previous stage ran on).
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  wanted = {k: tree[k] for k in ("ema_params" if ema else "params", "frozen")}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True),
  )
  params = _flatten(restored["ema_params" if ema else "params"])
  params.update(_flatten(restored["frozen"]))
  # nnx Variables are saved as {'value': array} nodes in some orbax versions.
  return {re.sub(r"/value$", "", k): v for k, v in params.items()}


def mapped_source_path(target_path: str, mapping=()) -> str:
  """The source path of `target_path` under (regex, template) `mapping`: the template of the
  first regex matching the whole path (`train_state.path_matches`'s rule)."""
  for pattern, template in mapping:
    if (match := re.fullmatch(pattern, target_path)) is not None:
      return match.expand(template)
  return target_path


def transfer_params(
    target: nnx.State,
    source: Mapping[str, np.ndarray],
    mapping=(),
    *,
    require_all: bool = True,
    mapped_only: bool = False,
) -> tuple[nnx.State, list[str]]:
  """Copies `source` arrays into the matching parameters of `target`.

  Args:
    target: an nnx parameter state (e.g. `TrainState.frozen` of the grown model).
    source: '/'-joined path → array, from `load_params`.
    mapping: (regex, template) pairs rewriting a target path into its source path; the first
      matching pair is used; unmatched paths keep their own name.
    require_all: every source parameter must land somewhere.
    mapped_only: fill only target paths that a `mapping` regex matches (a stage's mapping
      lists everything it imports; the other parameters are new).

  Returns:
    (the filled state, the target paths that were filled). A shape mismatch raises a
    ValueError naming the first mismatched parameter.
  """
  used, filled = set(), []

  def fill(path, variable):
    target_path = path_string(path)
    if mapped_only and not path_matches([p for p, _ in mapping], target_path):
      return variable
    source_path = mapped_source_path(target_path, mapping)
    if source_path not in source:
      return variable
    value = source[source_path]
    if value.shape != variable.shape:
      raise ValueError(
          f"checkpoint architecture does not match: parameter {target_path} (from"
          f" {source_path}) has shape {value.shape} in the checkpoint but {variable.shape} in"
          " the model"
      )
    used.add(source_path)
    filled.append(target_path)
    return variable.replace(jnp.asarray(value, variable.dtype))

  out = nnx.map_state(fill, target)
  unused = sorted(set(source) - used)
  if require_all and unused:
    raise ValueError(
        f"{len(unused)} checkpoint parameters have no place in the model, e.g."
        f" {unused[:5]}; check config.init_checkpoint.mapping"
    )
  return out, filled
