"""Growth stages: seed a model from a previous stage's checkpoint.

A stage config names the previous run in `config.init_checkpoint.path`; its parameters are
copied into the new model by path (after `config.init_checkpoint.mapping` rewrites), into
the frozen set and the trained set alike. Parameters the old model did not have (the new
growth blocks) keep their fresh initialisation.
"""

from __future__ import annotations

import jax
from absl import logging

from bootvae_jax.training import checkpoints
from bootvae_jax.training.train_state import TrainSetup, TrainState


def init_from_checkpoint(state: TrainState, setup: TrainSetup, init_cfg) -> TrainState:
  """`state` with the previous stage's parameters in place (EMA reset to the new params)."""
  source = checkpoints.load_params(init_cfg.path, init_cfg.step)
  mapping = tuple(tuple(m) for m in init_cfg.mapping)
  frozen, filled_frozen = checkpoints.transfer_params(state.frozen, source, mapping,
                                                      require_all=False)
  params, filled_params = checkpoints.transfer_params(state.params, source, mapping,
                                                      require_all=False)
  filled = set(filled_frozen) | set(filled_params)
  logging.info("init from %s: %d parameters restored (%d frozen), %d new", init_cfg.path,
               len(filled), len(filled_frozen), _count(state.params) + _count(state.frozen)
               - len(filled))
  state = state.replace(frozen=frozen, params=params, ema_params=params)
  return jax.device_put(state, setup.state_shardings)  # back onto the mesh


def _count(tree) -> int:
  return len(jax.tree.leaves(tree))
