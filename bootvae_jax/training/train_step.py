"""The jitted train and eval steps.

One step: encode → sample → decode, the weighted loss terms of `config.loss`, gradients of
the trainable parameters only, an `apply_if_finite` AdamW update, the EMA, and — when a GAN
loss is on — the discriminator's hinge update in the same jitted call.

The GAN is on for the step that starts with `state.step >= loss.gan_start_step` (0-based: with
gan_start_step=2 the first two updates have no GAN), for the generator and the discriminator
alike. Before that the discriminator's forward passes, the adaptive weight's two gradients and
the discriminator update are skipped at run time (`lax.cond`), not computed and multiplied by
0; their metrics (`g`, `gan_weight`, `d_*`) are 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax import struct

from bootvae_jax.cli import UserError
from bootvae_jax.core import metrics as metrics_lib
from bootvae_jax.core import temporal_metrics
from bootvae_jax.losses import adversarial
from bootvae_jax.losses import compat
from bootvae_jax.losses import perceptual
from bootvae_jax.losses import reconstruction
from bootvae_jax.core import sharding
from bootvae_jax.training.train_state import TrainSetup, TrainState, nonfinite_streak, skipped_updates


@struct.dataclass
class LossNets:
  """Frozen networks the losses run: LPIPS, and CV-VAE's image VAE (`losses/compat.py`).

  Passed to the jitted steps as an argument (a pytree), never closed over, so their weights
  are not baked into the compiled program; nothing differentiates them.
  """

  lpips: Any = None
  image_vae: Any = None


@dataclasses.dataclass(frozen=True)
class LossInputs:
  """What a loss term reads. x, recon: (B, T, H, W, C) in [-1, 1]."""

  loss_config: Any  # `config.loss`
  x: jax.Array
  recon: jax.Array
  posterior: Any  # autoencoder.DiagonalGaussian
  lpips: Any
  lpips_rng: jax.Array


@dataclasses.dataclass(frozen=True)
class WeightedLoss:
  """One row of the loss table: `config.loss.<weight>` times `fn(inputs)`, logged as `name`.

  A term is computed only when its weight is non-zero, unless `always` (then it is logged at
  weight 0 too). `of_reconstruction`: a function of the reconstruction, which the adaptive GAN
  weight balances the GAN term against (it re-evaluates these at the last layer's kernel).
  """

  name: str
  weight: str
  fn: Callable[[LossInputs], jax.Array]
  of_reconstruction: bool = True
  always: bool = False


def _perceptual(inputs: LossInputs) -> jax.Array:
  return perceptual.video_perceptual_loss(
      inputs.lpips,
      inputs.recon,
      inputs.x,
      num_frames=inputs.loss_config.perceptual_frames,
      rng=inputs.lpips_rng,
  )


# Every weighted term of the generator loss but the GAN's (its weight is adaptive and starts at
# `loss.gan_start_step`) and CV-VAE's regularisers (`config.compat`, `compat_terms`). A new loss:
# its function in losses/ and one row here (and its weight field in training/config.py).
LOSSES = (
    WeightedLoss("l1", "l1_weight", lambda i: reconstruction.l1_loss(i.recon, i.x)),
    WeightedLoss("l2", "l2_weight", lambda i: reconstruction.l2_loss(i.recon, i.x)),
    WeightedLoss("perceptual", "perceptual_weight", _perceptual),
    WeightedLoss(
        "kl",
        "kl_weight",
        lambda i: jnp.mean(i.posterior.kl()),
        of_reconstruction=False,
        always=True,
    ),
)


def weighted_terms(
    inputs: LossInputs, *, reconstruction_only: bool = False
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(Σ weight · term, {name: term}) over the rows of `LOSSES` (those `of_reconstruction`
  only, with `reconstruction_only`)."""
  total, terms = 0, {}
  for row in LOSSES:
    weight = inputs.loss_config[row.weight]
    if (row.of_reconstruction or not reconstruction_only) and (row.always or weight):
      terms[row.name] = row.fn(inputs)
      total = total + weight * terms[row.name]
  return total, terms


def gan_active(state: TrainState, setup: TrainSetup) -> jax.Array:
  """Whether the step starting from `state` trains with the GAN: step >= loss.gan_start_step."""
  return state.step >= setup.config.loss.gan_start_step


def compat_terms(compat_cfg, model, image_vae, x, z, loss_params, rng):
  """CV-VAE's regularisers (losses/compat.py): (weighted sum, terms)."""
  r = model.temporal_factor
  map_rng, encoder_rng = jax.random.split(rng)
  terms, total = {}, jnp.float32(0.0)
  if compat_cfg.decoder_weight:
    terms["compat_decoder"], _ = compat.decoder_side(
        image_vae, z, x, temporal_factor=r, mapping=compat_cfg.mapping, rng=map_rng
    )
    term = terms["compat_decoder"]
    if loss_params is not None:  # the released learnable log-variance weighting
      terms["compat_logvar"] = loss_params["compat_logvar"]
      term = compat.log_variance_weighted(term, loss_params["compat_logvar"])
    total = total + compat_cfg.decoder_weight * term
  if compat_cfg.encoder_weight:
    terms["compat_encoder"] = compat.encoder_side(
        image_vae, model, x, temporal_factor=r, rng=encoder_rng
    )
    total = total + compat_cfg.encoder_weight * terms["compat_encoder"]
  return total, terms


def generator_loss(
    params, loss_params, state: TrainState, setup: TrainSetup, x, rng, nets: LossNets | None
):
  """Total generator loss and its terms. x: (B, T, H, W, C) in [-1, 1]."""
  cfg = setup.config.loss
  nets = nets or LossNets()
  model = nnx.merge(setup.graphdef, params, state.frozen)
  sample_rng, lpips_rng = jax.random.split(rng)
  posterior = model.encode(x)
  z = posterior.sample(sample_rng)
  recon, head_input = model.decode_with_head_input(z)
  inputs = LossInputs(cfg, x, recon, posterior, nets.lpips, lpips_rng)
  total, terms = weighted_terms(inputs)
  if compat.enabled(setup.config.get("compat")):
    compat_total, compat_metrics = compat_terms(
        setup.config.compat, model, nets.image_vae, x, z, loss_params, jax.random.fold_in(rng, 1)
    )
    terms.update(compat_metrics)
    total = total + compat_total

  if setup.use_gan:
    disc = setup.discriminator(state)
    conv_out = model.decoder.conv_out
    head_input = jax.lax.stop_gradient(head_input)
    bias = conv_out.bias[...]

    def from_last_kernel(kernel):  # the reconstruction as a function of the last kernel only
      return model.decoder.output(conv_out.apply(head_input, kernel, bias)).astype(jnp.float32)

    def nll_of(kernel):
      recon_of_kernel = dataclasses.replace(inputs, recon=from_last_kernel(kernel))
      return weighted_terms(recon_of_kernel, reconstruction_only=True)[0]

    def g_of(kernel):
      return adversarial.hinge_g_loss(disc(from_last_kernel(kernel)))

    def gan_terms(recon):
      g = adversarial.hinge_g_loss(disc(recon))
      if cfg.adaptive_gan_weight:
        kernel = conv_out.kernel[...]
        weight = adversarial.adaptive_generator_weight(
            jax.grad(nll_of)(kernel), jax.grad(g_of)(kernel), max_weight=cfg.max_adaptive_weight
        )
      else:
        weight = jnp.float32(1.0)
      return g.astype(jnp.float32), weight.astype(jnp.float32) * cfg.gan_weight

    def before_start(recon):
      del recon
      return jnp.float32(0.0), jnp.float32(0.0)

    terms["g"], terms["gan_weight"] = jax.lax.cond(
        gan_active(state, setup), gan_terms, before_start, recon
    )
    total = total + terms["gan_weight"] * terms["g"]
  terms["loss"] = total
  return total, (terms, recon)


def discriminator_update(state: TrainState, setup: TrainSetup, x, recon, active):
  """Hinge loss (+ LeCam) on real clips vs stop-gradient reconstructions, when `active`;
  otherwise `state` unchanged (nothing computed) and zero metrics."""
  zeros = {k: jnp.float32(0.0) for k in ("d_loss", "d_real", "d_fake")}
  return jax.lax.cond(
      active, lambda s: _discriminator_step(s, setup, x, recon), lambda s: (s, zeros), state
  )


def _discriminator_step(state: TrainState, setup: TrainSetup, x, recon):
  cfg = setup.config.loss

  def loss_fn(disc_params, real_clips, fake_clips):
    disc = nnx.merge(setup.disc_graphdef, disc_params)
    real, fake = disc(real_clips), disc(fake_clips)
    loss = adversarial.hinge_d_loss(real, fake)
    if cfg.lecam_weight:
      loss = loss + cfg.lecam_weight * adversarial.lecam_regularizer(
          real, fake, state.lecam_ema[0], state.lecam_ema[1]
      )
    return loss, (jnp.mean(real), jnp.mean(fake))

  def microbatch_grads(i, real_clips, fake_clips):
    del i
    (d_loss, means), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.disc_params, real_clips, fake_clips
    )
    return (d_loss, means, grads), None

  (d_loss, (real_mean, fake_mean), grads), _ = over_microbatches(
      microbatch_grads, microbatches(setup.config), x, jax.lax.stop_gradient(recon)
  )
  updates, new_opt = setup.disc_tx.update(grads, state.disc_opt_state, state.disc_params)
  lecam = jnp.stack(
      adversarial.update_lecam_ema(
          state.lecam_ema[0], state.lecam_ema[1], real_mean, fake_mean, decay=cfg.lecam_decay
      )
  )
  state = state.replace(
      disc_params=optax.apply_updates(state.disc_params, updates),
      disc_opt_state=new_opt,
      lecam_ema=lecam.astype(state.lecam_ema.dtype),
  )
  metrics = {"d_loss": d_loss, "d_real": real_mean, "d_fake": fake_mean}
  return state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def microbatches(config) -> int:
  """`optimizer.microbatches` (absent from configs stored before it existed: 1)."""
  return int(config.optimizer.get("microbatches", 1))


def split_microbatches(x: jax.Array, n: int) -> jax.Array:
  """(B, ...) → (n, B/n, ...), microbatch m holding rows m, m + n, m + 2n, ...: each device's
  contiguous block of batch rows splits evenly over the microbatches, so no clip moves."""
  xs = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
  return sharding.constrain(xs, (None, "batch") + (None,) * (x.ndim - 1))


def join_microbatches(xs: jax.Array) -> jax.Array:
  """The inverse of `split_microbatches`: (n, B/n, ...) → (B, ...) in batch order."""
  return xs.swapaxes(0, 1).reshape((xs.shape[0] * xs.shape[1],) + xs.shape[2:])


def over_microbatches(fn: Callable, n: int, *batches: jax.Array):
  """`fn(index, *microbatches) -> (means, rows)` over `n` microbatches of `batches` (split
  alike) in a `lax.scan`: `means` (gradients, scalar terms) averaged, `rows` (per-clip outputs)
  joined back in batch order. Activations live for one microbatch at a time; n == 1 is one
  plain call."""
  if n == 1:
    return fn(0, *batches)
  parts = tuple(split_microbatches(b, n) for b in batches)
  means_shape = jax.eval_shape(fn, 0, *(p[0] for p in parts))[0]
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), means_shape)

  def body(total, inputs):
    means, rows = fn(*inputs)
    return jax.tree.map(jnp.add, total, means), rows

  total, rows = jax.lax.scan(body, zeros, (jnp.arange(n),) + parts)
  return jax.tree.map(lambda t: t / n, total), jax.tree.map(join_microbatches, rows)


def train_step(
    state: TrainState, batch: dict, nets: LossNets | None, *, setup: TrainSetup, base_rng
):
  x = batch["video"]
  active = gan_active(state, setup)  # before the step counter moves: one boundary for G and D
  rng = jax.random.fold_in(base_rng, state.step)
  grad_fn = jax.value_and_grad(generator_loss, argnums=(0, 1), has_aux=True)
  n = microbatches(setup.config)

  def microbatch_grads(i, x_part):
    part_rng = rng if n == 1 else jax.random.fold_in(rng, i)
    (_, (terms, recon)), grads = grad_fn(
        state.params, state.loss_params, state, setup, x_part, part_rng, nets
    )
    # The reconstruction is kept only for the discriminator.
    return (grads, terms), (recon if setup.use_gan else None)

  ((grads, loss_grads), terms), recon = over_microbatches(microbatch_grads, n, x)
  if state.loss_params is not None:
    loss_updates, loss_opt = setup.loss_tx.update(loss_grads, state.loss_opt_state)
    state = state.replace(
        loss_params=optax.apply_updates(state.loss_params, loss_updates), loss_opt_state=loss_opt
    )
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = setup.config.optimizer.ema_decay
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  metrics = dict(terms)
  metrics.update(
      grad_norm=optax.global_norm(grads),
      learning_rate=setup.schedule(state.step),
      skipped_updates=skipped_updates(opt_state).astype(jnp.float32),
      nonfinite_streak=nonfinite_streak(opt_state).astype(jnp.float32),
  )
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  if setup.use_gan:
    state, d_metrics = discriminator_update(state, setup, x, recon, active)
    metrics.update(d_metrics)
  return state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def eval_step(params, frozen, video, nets: LossNets | None, *, setup: TrainSetup):
  """Reconstruction from the posterior mean; per-clip PSNR, SSIM, PSNR per phase of the latent
  group and flicker (and, with a CV-VAE image VAE in `nets`, the compatibility PSNR: the image
  decoder on the video latent). `params`: the trained parameters or their EMA (same shapes and
  shardings, so one compilation serves both)."""
  model = nnx.merge(setup.graphdef, params, frozen)
  recon, posterior = model(video)
  recon = jnp.clip(recon, -1.0, 1.0)
  scores = {"psnr": metrics_lib.psnr(recon, video), "ssim": metrics_lib.ssim(recon, video)}
  scores.update(_temporal_scores(video, recon, model.temporal_factor))
  compat_cfg = setup.config.get("compat")
  if nets is not None and nets.image_vae is not None:
    scores["compat_psnr"] = compat.compatibility_psnr(
        nets.image_vae,
        posterior.mean,
        video,
        temporal_factor=model.temporal_factor,
        mapping=compat_cfg.mapping,
    )
  return recon, scores


def _temporal_scores(video, recon, temporal_factor: int) -> dict[str, jax.Array]:
  """Per-clip PSNR of each phase of the latent group (`psnr_phase_<p>`) and flicker, for the
  clip lengths they apply to (`core/temporal_metrics.py`)."""
  scores = {}
  phases = temporal_metrics.per_phase_psnr(video, recon, temporal_factor)
  if not isinstance(phases, temporal_metrics.NotApplicable):
    scores.update({f"psnr_phase_{p}": phases[:, p] for p in range(phases.shape[1])})
  flicker = temporal_metrics.flicker(video, recon)
  if not isinstance(flicker, temporal_metrics.NotApplicable):
    scores["flicker"] = flicker
  return scores


def _replicated(mesh, tree):
  return jax.tree.map(lambda _: sharding.replicated(mesh), tree)


def check_batch_split(config, mesh) -> None:
  """The global batch must split evenly over the devices that share it, and each device's
  rows over `optimizer.microbatches`: a UserError before any compute otherwise."""
  batch = int(config.data.batch_size)
  shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES if a in mesh.shape)
  n = microbatches(config)
  if batch % shards or (batch // shards) % n:
    raise UserError(
        f"data.batch_size={batch} cannot be split over the {shards} devices that share the"
        f" batch (mesh {dict(mesh.shape)}) into optimizer.microbatches={n} equal parts: it"
        f" must be a multiple of {shards * n}"
    )


def jit_train_step(setup: TrainSetup, nets: LossNets | None):
  """`train_step` under `jax.jit` with explicit shardings; the state is donated."""
  mesh = setup.mesh
  check_batch_split(setup.config, mesh)
  batch_sharding = {"video": sharding.batch_sharding(mesh)}
  step = functools.partial(train_step, setup=setup, base_rng=jax.random.key(setup.config.seed))
  return jax.jit(
      step,
      in_shardings=(setup.state_shardings, batch_sharding, _replicated(mesh, nets)),
      out_shardings=(setup.state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,),
  )


def jit_eval_step(setup: TrainSetup, nets: LossNets | None = None):
  """`eval_fn(params, frozen, clips, nets)` under `jax.jit`; `nets` only fixes the argument's
  shardings."""
  mesh = setup.mesh
  shardings = setup.state_shardings
  return jax.jit(
      functools.partial(eval_step, setup=setup),
      # Held-out clips are few and need not divide the device count: replicate them.
      in_shardings=(
          shardings.params,
          shardings.frozen,
          sharding.replicated(mesh),
          _replicated(mesh, nets),
      ),
      out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
  )
