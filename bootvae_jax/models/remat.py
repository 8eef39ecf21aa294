"""Activation rematerialisation (`model.remat`): which activations the backward pass
recomputes instead of keeping, traded for memory on an accelerator (results/pod_fit.md).

* "" (or False): keep everything.
* "block" (or True): each res block keeps only its input; everything inside is recomputed.
* "block_convs": each res block keeps its conv outputs; norms and activations are recomputed.
* "level": each encoder / decoder level (its blocks and resampler) keeps only its input.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from bootvae_jax.cli import UserError
from bootvae_jax.models import streaming

CONV_OUTPUT = "conv_output"  # the checkpoint name of every Conv3d's output (models/layers.py)
POLICIES = ("", "block", "block_convs", "level")


def policy(value: Any) -> str:
  """The policy a `model.remat` value names (booleans from older configs: True = "block")."""
  # A flag gives strings: --config.model.remat=True on this string field is "True".
  if value is True or str(value).lower() == "true":
    return "block"
  if value is False or value is None or str(value).lower() == "false":
    return ""
  if value not in POLICIES:
    raise UserError(f"model.remat={value!r} is unknown; use one of {POLICIES} (or a boolean)")
  return value


def blocks_only_policy(value: Any) -> str:
  """The policy for blocks that no level wraps (a grown level is only its few blocks): "level"
  then rematerialises those blocks one by one."""
  named = policy(value)
  return "block" if named == "level" else named


def call(module: nnx.Module, x: jax.Array, remat: str, *, scope: str, args: tuple = ()) -> jax.Array:
  """`module(x, *args)`, rematerialised when the policy `remat` names this scope ("block" for
  res blocks, "level" for levels: a level's blocks then run plainly inside it)."""
  # A stream's cached states would leak out of the remat trace; streaming never differentiates.
  if streaming.active_stream() is not None or not remat.startswith(scope):
    return module(x, *args)
  saved: Callable | None = None
  if remat == "block_convs":
    saved = jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)
  return nnx.remat(lambda m, h: m(h, *args), policy=saved)(module, x)
