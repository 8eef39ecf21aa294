"""The jitted train and eval steps.

One step: encode → sample → decode, the weighted loss terms of `config.loss`, gradients of
the trainable parameters only, an `apply_if_finite` AdamW update, the EMA, and — when a GAN
loss is on — the discriminator's hinge update in the same jitted call.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bootvae_jax.evaluation import metrics as metrics_lib
from bootvae_jax.losses import adversarial
from bootvae_jax.losses import perceptual
from bootvae_jax.losses import reconstruction
from bootvae_jax.training import partitioning
from bootvae_jax.training.train_state import TrainSetup, TrainState, skipped_updates


def reconstruction_terms(loss_cfg, x, recon, lpips, rng) -> dict[str, jax.Array]:
  """The pixel / perceptual terms that the adaptive GAN weight balances against."""
  terms = {}
  if loss_cfg.l1_weight:
    terms["l1"] = reconstruction.l1_loss(recon, x)
  if loss_cfg.l2_weight:
    terms["l2"] = reconstruction.l2_loss(recon, x)
  if loss_cfg.perceptual_weight:
    terms["perceptual"] = perceptual.video_perceptual_loss(
        lpips, recon, x, num_frames=loss_cfg.perceptual_frames, rng=rng)
  return terms


def weighted_nll(loss_cfg, terms) -> jax.Array:
  weights = {"l1": loss_cfg.l1_weight, "l2": loss_cfg.l2_weight,
             "perceptual": loss_cfg.perceptual_weight}
  return sum(weights[k] * v for k, v in terms.items())


def generator_loss(params, state: TrainState, setup: TrainSetup, x, rng, lpips):
  """Total generator loss and its terms. x: (B, T, H, W, C) in [-1, 1]."""
  cfg = setup.config.loss
  model = nnx.merge(setup.graphdef, params, state.frozen)
  sample_rng, lpips_rng = jax.random.split(rng)
  posterior = model.encode(x)
  recon, head_input = model.decode_with_head_input(posterior.sample(sample_rng))
  terms = reconstruction_terms(cfg, x, recon, lpips, lpips_rng)
  nll = weighted_nll(cfg, terms)
  terms["kl"] = jnp.mean(posterior.kl())
  total = nll + cfg.kl_weight * terms["kl"]

  if setup.use_gan:
    disc = setup.discriminator(state)
    conv_out = model.decoder.conv_out
    head_input = jax.lax.stop_gradient(head_input)
    bias = conv_out.bias[...]

    def from_last_kernel(kernel):  # the reconstruction as a function of the last kernel only
      return conv_out.apply(head_input, kernel, bias).astype(jnp.float32)

    def nll_of(kernel):
      return weighted_nll(cfg, reconstruction_terms(cfg, x, from_last_kernel(kernel), lpips,
                                                    lpips_rng))

    def g_of(kernel):
      return adversarial.hinge_g_loss(disc(from_last_kernel(kernel)))

    terms["g"] = adversarial.hinge_g_loss(disc(recon))
    if cfg.adaptive_gan_weight:
      kernel = conv_out.kernel[...]
      weight = adversarial.adaptive_generator_weight(
          jax.grad(nll_of)(kernel), jax.grad(g_of)(kernel), max_weight=cfg.max_adaptive_weight)
    else:
      weight = jnp.float32(1.0)
    active = (state.step >= cfg.gan_start_step).astype(jnp.float32)
    terms["gan_weight"] = weight * cfg.gan_weight * active
    total = total + terms["gan_weight"] * terms["g"]
  terms["loss"] = total
  return total, (terms, recon)


def discriminator_update(state: TrainState, setup: TrainSetup, x, recon):
  """Hinge loss (+ LeCam) on real clips vs stop-gradient reconstructions."""
  cfg = setup.config.loss
  recon = jax.lax.stop_gradient(recon)

  def loss_fn(disc_params):
    disc = nnx.merge(setup.disc_graphdef, disc_params)
    real, fake = disc(x), disc(recon)
    loss = adversarial.hinge_d_loss(real, fake)
    if cfg.lecam_weight:
      loss = loss + cfg.lecam_weight * adversarial.lecam_regularizer(
          real, fake, state.lecam_ema[0], state.lecam_ema[1])
    return loss, (jnp.mean(real), jnp.mean(fake))

  (d_loss, (real_mean, fake_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.disc_params)
  active = state.step >= cfg.gan_start_step
  updates, new_opt = setup.disc_tx.update(grads, state.disc_opt_state, state.disc_params)
  new_params = optax.apply_updates(state.disc_params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
  lecam = jnp.stack(adversarial.update_lecam_ema(
      state.lecam_ema[0], state.lecam_ema[1], real_mean, fake_mean, decay=cfg.lecam_decay))
  state = state.replace(disc_params=keep(new_params, state.disc_params),
                        disc_opt_state=keep(new_opt, state.disc_opt_state),
                        lecam_ema=jnp.where(active, lecam, state.lecam_ema))
  return state, {"d_loss": d_loss, "d_real": real_mean, "d_fake": fake_mean}


def train_step(state: TrainState, batch: dict, lpips, *, setup: TrainSetup, base_rng):
  x = batch["video"]
  rng = jax.random.fold_in(base_rng, state.step)
  grad_fn = jax.value_and_grad(generator_loss, has_aux=True)
  (_, (terms, recon)), grads = grad_fn(state.params, state, setup, x, rng, lpips)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = setup.config.optimizer.ema_decay
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
  metrics = dict(terms)
  metrics.update(grad_norm=optax.global_norm(grads), learning_rate=setup.schedule(state.step),
                 skipped_updates=skipped_updates(opt_state).astype(jnp.float32))
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  if setup.use_gan:
    state, d_metrics = discriminator_update(state, setup, x, recon)
    metrics.update(d_metrics)
  return state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def eval_step(state: TrainState, video, *, setup: TrainSetup, ema: bool):
  """Reconstruction from the posterior mean; per-clip PSNR and SSIM."""
  model = setup.model(state, ema=ema)
  recon = jnp.clip(model(video)[0], -1.0, 1.0)
  return recon, {"psnr": metrics_lib.psnr(recon, video), "ssim": metrics_lib.ssim(recon, video)}


def jit_train_step(setup: TrainSetup, lpips: Any):
  """`train_step` under `jax.jit` with explicit shardings; the state is donated."""
  mesh = setup.mesh
  lpips_sharding = jax.tree.map(lambda _: partitioning.replicated(mesh), lpips)
  batch_sharding = {"video": partitioning.batch_sharding(mesh)}
  step = functools.partial(train_step, setup=setup, base_rng=jax.random.key(setup.config.seed))
  return jax.jit(
      step,
      in_shardings=(setup.state_shardings, batch_sharding, lpips_sharding),
      out_shardings=(setup.state_shardings, partitioning.replicated(mesh)),
      donate_argnums=(0,),
  )


def jit_eval_step(setup: TrainSetup, ema: bool):
  mesh = setup.mesh
  return jax.jit(
      functools.partial(eval_step, setup=setup, ema=ema),
      # Held-out clips are few and need not divide the device count: replicate them.
      in_shardings=(setup.state_shardings, partitioning.replicated(mesh)),
      out_shardings=(partitioning.replicated(mesh), partitioning.replicated(mesh)),
  )
