"""Orbax checkpoints: train state + grain iterator + metadata, and parameter transfer.

A step directory holds three items: `state` (the whole `TrainState`), `data` (the grain
iterator position, so a resumed run sees exactly the batches an uninterrupted one would)
and `meta` (config, step, stage). Orbax writes each step into a temporary directory and
renames it when complete, so a killed run never leaves a half-written checkpoint behind.

`load_params` / `transfer_params` read another run's parameters without knowing its model:
ProMAG stages use them to carry the lower level into a bigger model.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from bootvae_jax.training.train_state import path_string


class Checkpoints:
  """`CheckpointManager` for one workdir (`<workdir>/checkpoints/<step>/{state,data,meta}`)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, *, batches=None, meta: Mapping[str, Any] | None = None,
           force: bool = False) -> None:
    items = dict(state=ocp.args.StandardSave(state),
                 meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))))
    if batches is not None:
      items["data"] = batches.checkpoint_args_save()
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, shardings, *, batches=None):
    """The state at `step`, placed with `shardings`; restores `batches`' position in place."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        shardings)
    items = dict(state=ocp.args.StandardRestore(target))
    if batches is not None:
      items["data"] = batches.checkpoint_args_restore()
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


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


def load_params(path: str, step: int = -1, *, ema: bool = False) -> dict[str, np.ndarray]:
  """All autoencoder parameters (trained and frozen) of a run, keyed by '/'-joined path.

  Args:
    path: a workdir, its `checkpoints` directory, or one step directory.
    step: which step (-1: the latest).
    ema: take the EMA of the trained parameters instead of the raw ones.
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if os.path.isdir(os.path.join(path, "state")):
    state_dir = os.path.join(path, "state")
  else:
    steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {path}; train the previous stage first")
    chosen = steps[-1] if step < 0 else step
    if chosen not in steps:
      raise FileNotFoundError(f"no step {chosen} under {path}; available: {steps}")
    state_dir = os.path.join(path, str(chosen), "state")
  # Partial restore: only the parameter subtrees, as host numpy arrays (no optimizer state,
  # and no dependence on the mesh the previous stage ran on).
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  wanted = {k: tree[k] for k in ("ema_params" if ema else "params", "frozen")}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True))
  params = _flatten(restored["ema_params" if ema else "params"])
  params.update(_flatten(restored["frozen"]))
  # nnx Variables are saved as {'value': array} nodes in some orbax versions.
  return {re.sub(r"/value$", "", k): v for k, v in params.items()}


def mapped_source_path(target_path: str, mapping=()) -> str:
  """The source path of `target_path` under (regex, template) `mapping` (first full match)."""
  for pattern, template in mapping:
    if (match := re.fullmatch(pattern, target_path)) is not None:
      return match.expand(template)
  return target_path


def transfer_params(target: nnx.State, source: Mapping[str, np.ndarray],
                    mapping=(), *, require_all: bool = True,
                    mapped_only: bool = False) -> tuple[nnx.State, list[str]]:
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
    if mapped_only and not any(re.fullmatch(p, target_path) for p, _ in mapping):
      return variable
    source_path = mapped_source_path(target_path, mapping)
    if source_path not in source:
      return variable
    value = source[source_path]
    if value.shape != variable.shape:
      raise ValueError(
          f"checkpoint architecture does not match: parameter {target_path} (from"
          f" {source_path}) has shape {value.shape} in the checkpoint but {variable.shape} in"
          " the model")
    used.add(source_path)
    filled.append(target_path)
    return variable.replace(jnp.asarray(value, variable.dtype))

  out = nnx.map_state(fill, target)
  unused = sorted(set(source) - used)
  if require_all and unused:
    raise ValueError(f"{len(unused)} checkpoint parameters have no place in the model, e.g."
                     f" {unused[:5]}; check config.init_checkpoint.mapping")
  return out, filled
