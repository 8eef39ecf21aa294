"""Train state: trainable / frozen parameter split, optimizers, EMA, discriminator.

The model is split once, outside jit, into a static `graphdef` and three parameter states:
`params` (trained), `frozen` (a filter on parameter paths: no gradients, no optimizer
state) and, when a GAN loss is on, the discriminator's. Everything that changes during
training lives in `TrainState`, a pytree the jitted step takes and returns (donated).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from flax import struct

from bootvae_jax import models

# The parameter-path rules are the loader's (checkpoint transfer matches paths the same way).
from bootvae_jax.loading import path_matches
from bootvae_jax.loading import path_string
from bootvae_jax.models import autoencoder
from bootvae_jax.models import discriminator as discriminator_lib
from bootvae_jax.core import sharding


def path_filter(patterns) -> Callable[[tuple, Any], bool]:
  """An nnx filter true for Params whose whole path matches one of `patterns`."""
  patterns = tuple(patterns)

  def matches(path, value) -> bool:
    return isinstance(value, nnx.Param) and path_matches(patterns, path_string(path))

  return matches


@struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  frozen: nnx.State
  opt_state: Any
  ema_params: nnx.State
  disc_params: Any  # nnx.State, or None without a GAN loss
  disc_opt_state: Any
  lecam_ema: jax.Array  # (2,): EMAs of real / fake discriminator logits
  # Trainable parameters of the losses ({'compat_logvar': ()} for CV-VAE's weighting), or None.
  loss_params: Any = None
  loss_opt_state: Any = None


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int, scale: float = 1.0):
  """Linear warmup, then a cosine down to the end value at `opt.decay_steps` (0: at
  `total_steps`), held from there on."""
  peak = opt.learning_rate * scale
  warmup = min(int(opt.warmup_steps), max(total_steps - 1, 0))
  decay = int(opt.get("decay_steps", 0)) or total_steps
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=warmup,
      decay_steps=max(decay, warmup + 1),
      end_value=peak * opt.end_learning_rate_ratio,
  )


def _adamw(opt, schedule, *, b1=None, b2=None, weight_decay=None):
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip_norm),
      # `is None`, not `or`: 0.0 is a common GAN choice of b1.
      optax.adamw(
          schedule,
          b1=opt.b1 if b1 is None else b1,
          b2=opt.b2 if b2 is None else b2,
          eps=opt.eps,
          weight_decay=opt.weight_decay if weight_decay is None else weight_decay,
      ),
  )


def make_optimizer(config: ml_collections.ConfigDict, params: nnx.State):
  """AdamW + warmup-cosine + global-norm clipping; a non-finite update is skipped and counted
  (`optax.apply_if_finite`). Parameters matched by `config.freeze` while
  `optimizer.finetune_learning_rate_multiplier > 0` train at that fraction of the rate."""
  opt = config.optimizer
  schedule = learning_rate_schedule(opt, config.total_steps)
  tx = _adamw(opt, schedule)
  if opt.finetune_learning_rate_multiplier > 0 and config.freeze:
    slow = _adamw(
        opt, learning_rate_schedule(opt, config.total_steps, opt.finetune_learning_rate_multiplier)
    )
    is_lower = path_filter(config.freeze)
    labels = nnx.map_state(lambda path, v: "finetune" if is_lower(path, v) else "new", params)
    tx = optax.multi_transform({"new": tx, "finetune": slow}, labels)
  # Never give up: a run of bad batches is skipped, not fatal (max_consecutive_errors large).
  return optax.apply_if_finite(tx, max_consecutive_errors=1_000_000), schedule


def make_disc_optimizer(config: ml_collections.ConfigDict):
  d = config.discriminator
  schedule = learning_rate_schedule(
      config.optimizer, config.total_steps, d.learning_rate / config.optimizer.learning_rate
  )
  return optax.apply_if_finite(
      _adamw(config.optimizer, schedule, b1=d.b1, b2=d.b2, weight_decay=d.weight_decay),
      max_consecutive_errors=1_000_000,
  )


@dataclasses.dataclass
class TrainSetup:
  """The static half of training: graph definitions, optimizers, shardings, the mesh."""

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  graphdef: Any
  disc_graphdef: Any
  tx: optax.GradientTransformation
  disc_tx: optax.GradientTransformation | None
  schedule: Callable
  state_shardings: Any
  use_gan: bool
  loss_tx: optax.GradientTransformation | None = None

  def model(self, state: TrainState, ema: bool = False) -> autoencoder.VideoAutoencoder:
    """The autoencoder holding `state`'s parameters (or their EMA)."""
    return nnx.merge(self.graphdef, state.ema_params if ema else state.params, state.frozen)

  def discriminator(self, state: TrainState):
    return nnx.merge(self.disc_graphdef, state.disc_params)


def _build_model(config, seed: int):
  model = models.build_model(config.model, seed=seed)  # base or grown
  frozen_filter = (
      path_filter(config.freeze)
      if (config.freeze and config.optimizer.finetune_learning_rate_multiplier <= 0)
      else nnx.Not(nnx.Everything())
  )
  graphdef, frozen, params = nnx.split(model, frozen_filter, nnx.Param)
  return graphdef, params, frozen


def _check_freeze_patterns(config, params: nnx.State, frozen: nnx.State) -> None:
  paths = [path_string(p) for p, _ in list(params.flat_state()) + list(frozen.flat_state())]
  for pattern in config.freeze:
    if not any(path_matches((pattern,), p) for p in paths):
      raise ValueError(
          f"config.freeze entry {pattern!r} matches no parameter; a pattern must match a whole"
          f" '/'-joined path (e.g. {pattern.rstrip('/')}/.* for everything under it); paths"
          f" look like {paths[0]}"
      )


def _build_discriminator(config, seed: int):
  d = config.discriminator
  disc = discriminator_lib.PatchDiscriminator3D(
      config.model.out_channels,
      d.base_channels,
      d.num_layers,
      num_groups=min(32, d.base_channels),
      rngs=autoencoder.init_rngs(seed + 1),
  )
  return nnx.split(disc, nnx.Param)


def initial_loss_params(config: ml_collections.ConfigDict) -> dict[str, jax.Array] | None:
  """The losses' own trainable parameters: CV-VAE's log-variance when configured, else None."""
  compat = config.get("compat")
  if compat is None or not (compat.learned_logvar and compat.decoder_weight > 0):
    return None
  return {"compat_logvar": jnp.asarray(compat.logvar_init, jnp.float32)}


def create_train_state(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, abstract: bool = False
) -> tuple[TrainSetup, TrainState]:
  """Builds the state directly in its shardings: shapes are traced with `jax.eval_shape`,
  shardings derived from logical axis names, and the init jitted with those out_shardings
  (no full replica ever exists on one device).

  With `abstract=True` nothing is initialised: the state's leaves are `jax.ShapeDtypeStruct`s
  with their shardings, the target a resumed run restores into.
  """
  use_gan = config.loss.gan_weight > 0
  graphdef, abstract_params, abstract_frozen = jax.eval_shape(
      lambda: _build_model(config, config.seed)
  )
  _check_freeze_patterns(config, abstract_params, abstract_frozen)
  tx, schedule = make_optimizer(config, abstract_params)
  disc_graphdef, disc_tx = None, None
  if use_gan:
    disc_graphdef, _ = jax.eval_shape(lambda: _build_discriminator(config, config.seed))
    disc_tx = make_disc_optimizer(config)
  # The losses' parameters follow the generator's schedule, without weight decay.
  loss_tx = (
      optax.adam(schedule, b1=config.optimizer.b1, b2=config.optimizer.b2)
      if initial_loss_params(config) is not None
      else None
  )

  def init() -> TrainState:
    _, params, frozen = _build_model(config, config.seed)
    disc_params = disc_opt = None
    if use_gan:
      _, disc_params = _build_discriminator(config, config.seed)
      disc_opt = disc_tx.init(disc_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        ema_params=params,
        disc_params=disc_params,
        disc_opt_state=disc_opt,
        lecam_ema=jnp.zeros((2,), jnp.float32),
        loss_params=(loss_params := initial_loss_params(config)),
        loss_opt_state=None if loss_tx is None else loss_tx.init(loss_params),
    )

  abstract_state = jax.eval_shape(init)
  shardings = sharding.tree_shardings(abstract_state, mesh, config.sharding_rules)
  if abstract:
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
  else:
    state = jax.jit(init, out_shardings=shardings)()
  setup = TrainSetup(
      config=config,
      mesh=mesh,
      graphdef=graphdef,
      disc_graphdef=disc_graphdef,
      tx=tx,
      disc_tx=disc_tx,
      schedule=schedule,
      state_shardings=shardings,
      use_gan=use_gan,
      loss_tx=loss_tx,
  )
  return setup, state


def skipped_updates(opt_state) -> jax.Array:
  """How many updates `apply_if_finite` has skipped for non-finite gradients."""
  return opt_state.total_notfinite


def nonfinite_streak(opt_state) -> jax.Array:
  """How many of the latest updates in a row were non-finite (0 after a finite one); the
  trainer stops a run whose streak reaches `config.max_consecutive_nonfinite`."""
  return opt_state.notfinite_count
