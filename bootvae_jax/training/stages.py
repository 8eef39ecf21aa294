"""Growth stages: a stage's config (`next_stage`, `direct_baseline`) and seeding its model
from a previous stage's checkpoint (`init_from_checkpoint`).

A stage config names the previous run in `config.init_checkpoint.path` (or, with
`config.init_checkpoint.inflate`, an image VAE inflated onto the model: `models/init.py`); its
parameters are copied into the new model by path, into the frozen set and the trained set
alike. An empty `config.init_checkpoint.mapping` restores every parameter under its own path; a mapping of
(model-path regex, checkpoint-path template) pairs restores exactly the parameters it matches
(ProMAG: `encoder/lower/X` ← `encoder/X`). Everything else (the new growth level) keeps its
fresh initialisation.

Architecture checks, each naming the first offending parameter:
  * a parameter present on both sides with different shapes;
  * a source parameter that lands nowhere (unless `init_checkpoint.exclude` drops it, as
    ProMAG drops the previous stage's head);
  * a model parameter that `mapping` (or `config.freeze`) says comes from the checkpoint but
    that the checkpoint lacks: it would otherwise stay random, and frozen.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import logging

from bootvae_jax import loading
from bootvae_jax.loading import path_matches
from bootvae_jax.loading import path_string
from bootvae_jax.models import progressive
from bootvae_jax.training.train_state import TrainSetup
from bootvae_jax.training.train_state import TrainState
from bootvae_jax.training.train_state import path_filter


def source_params(init_cfg, model_config) -> dict:
  """'/'-joined path → array: a previous run's parameters, or with `init_cfg.inflate` an image
  VAE's inflated onto the model's base (growth levels stripped: restore it through
  `progressive.STAGE_MAPPING` like a previous stage)."""
  mode = init_cfg.get("inflate", "")
  if not mode:
    return loading.load_params(init_cfg.path, init_cfg.step)
  from bootvae_jax.models import init as init_lib  # pylint: disable=g-import-not-at-top

  base = model_config.copy_and_resolve_references()
  if base.get("growth") is not None:
    base.growth.levels = 0
  image_vae = loading.load_image_vae(init_cfg.path)
  return init_lib.flat_params(init_lib.inflate(image_vae, base, mode))


def init_from_checkpoint(state: TrainState, setup: TrainSetup, init_cfg) -> TrainState:
  """`state` with the previous stage's parameters in place (EMA reset to the new params)."""
  source = source_params(init_cfg, setup.config.model)
  mapping = tuple(tuple(m) for m in init_cfg.mapping)
  excluded = tuple(init_cfg.get("exclude", ()))
  source = {k: v for k, v in source.items() if not path_matches(excluded, k)}
  # With a mapping, only the parameters it matches are restored: the new growth level must
  # keep its fresh initialisation even where the previous stage has a same-named parameter.
  transfer = lambda tree: loading.transfer_params(
      tree, source, mapping, require_all=False, mapped_only=bool(mapping)
  )
  frozen, filled_frozen = transfer(state.frozen)
  params, filled_params = transfer(state.params)
  filled = set(filled_frozen) | set(filled_params)
  where = f"checkpoint {init_cfg.path} does not match the model"
  used = {loading.mapped_source_path(p, mapping) for p in filled}
  if unused := sorted(set(source) - used):
    raise ValueError(
        f"{where}: checkpoint parameter {unused[0]} has no place in the model ({len(unused)}"
        " unplaced); fix config.init_checkpoint.mapping, or list it in"
        " config.init_checkpoint.exclude if dropping it is intended"
    )
  frozen_filter = path_filter(setup.config.freeze)
  required = sorted(
      path_string(p)
      for p, v in list(state.params.flat_state()) + list(state.frozen.flat_state())
      if (path_matches([m[0] for m in mapping], path_string(p)) or frozen_filter(p, v))
      and path_string(p) not in filled
  )
  if required:
    first = required[0]
    raise ValueError(
        f"{where}: model parameter {first} (from"
        f" {loading.mapped_source_path(first, mapping)}) is missing in the checkpoint"
        f" ({len(required)} missing); was the previous stage trained with the same base"
        " architecture?"
    )
  logging.info(
      "init from %s: %d parameters restored (%d frozen), %d new",
      init_cfg.path,
      len(filled),
      len(filled_frozen),
      _count(state.params) + _count(state.frozen) - len(filled),
  )
  # The EMA gets its own buffers: the train step donates params and ema_params separately.
  state = state.replace(
      frozen=frozen, params=params, ema_params=jax.tree.map(lambda p: p.copy(), params)
  )
  return jax.device_put(state, setup.state_shardings)  # back onto the mesh


def _count(tree) -> int:
  return len(jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
# Stage configs (used by configs/promag_*.py and configs/direct_*.py): the training fields
# (`freeze`, `optimizer`, `init_checkpoint`) a grown model's stage needs.


def next_stage(
    config: ml_collections.ConfigDict,
    *,
    previous_workdir: str,
    finetune_learning_rate_multiplier: float = 0.0,
) -> ml_collections.ConfigDict:
  """Turns the training config of one stage into the next stage's, in place.

  One more 2x temporal growth level; the previous stage's parameters are restored from
  `previous_workdir` (its latest checkpoint) through `progressive.STAGE_MAPPING`, minus its
  head (`progressive.STAGE_EXCLUDE`), and frozen — or fine-tuned at
  `finetune_learning_rate_multiplier` times the learning rate when that is > 0.
  """
  config.model.growth.levels += 1
  config.freeze = (progressive.LOWER_LEVEL,)
  config.optimizer.finetune_learning_rate_multiplier = finetune_learning_rate_multiplier
  config.init_checkpoint.path = previous_workdir
  config.init_checkpoint.step = -1
  if "inflate" in config.init_checkpoint:  # the previous stage may have been inflated
    config.init_checkpoint.inflate = ""
  return use_stage_restore_rules(config)


def use_stage_restore_rules(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets `config.init_checkpoint.mapping` / `exclude` for `config.model.growth.init`, in place:
  the lower level from the previous stage's body, and with 'from_lower' its head too. Call it
  again after changing `growth.init` on a config `next_stage` made (`training.config.validate`
  refuses a mismatch)."""
  if progressive.starts_from_lower(config.model):
    config.init_checkpoint.mapping = progressive.STAGE_MAPPING + progressive.HEAD_MAPPING
    config.init_checkpoint.exclude = ()
  else:
    config.init_checkpoint.mapping = progressive.STAGE_MAPPING
    config.init_checkpoint.exclude = progressive.STAGE_EXCLUDE
  return config


def direct_baseline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A grown stage config turned into its direct baseline, in place: the same depth (the
  same growth levels) with plain stacking (`mixing='none'`), everything trained from scratch
  (what the ProMAG paper calls MagViTv2-8x / -16x)."""
  config.model.growth.update(mixing="none", init="fresh")
  config.freeze = ()
  config.optimizer.finetune_learning_rate_multiplier = 0.0
  config.init_checkpoint.path = ""
  config.init_checkpoint.mapping = ()
  config.init_checkpoint.exclude = ()
  return config
