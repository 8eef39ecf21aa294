"""GAN losses for the patch discriminator: hinge, LeCam regulariser, adaptive weight.

All reductions are means over every logit (patch logits `(B, T', H', W', 1)` or any
shape) and are computed in float32.
"""

from typing import Any

import jax
import jax.numpy as jnp


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Discriminator hinge loss, taming-transformers convention (with the 1/2 factor).

  Args:
    real_logits: discriminator logits on real clips, any shape.
    fake_logits: logits on reconstructions (already stop-gradient'ed by the caller).

  Returns:
    Scalar `0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))`.
  """
  loss_real = jnp.mean(jax.nn.relu(1.0 - real_logits.astype(jnp.float32)))
  loss_fake = jnp.mean(jax.nn.relu(1.0 + fake_logits.astype(jnp.float32)))
  return 0.5 * (loss_real + loss_fake)


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Generator hinge loss. fake_logits: any shape -> scalar `-mean(fake_logits)`."""
  return -jnp.mean(fake_logits.astype(jnp.float32))


def lecam_regularizer(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    ema_real: jax.Array | float,
    ema_fake: jax.Array | float,
) -> jax.Array:
  """LeCam regulariser (Tseng et al., "Regularizing GANs under limited data", CVPR 2021).

  Pulls real logits towards the running mean of fake logits and vice versa, only in the
  direction that would over-separate them (the official implementation's form).

  Args:
    real_logits: discriminator logits on real clips, any shape.
    fake_logits: logits on reconstructions, any shape.
    ema_real: scalar EMA of mean real logits (see `update_lecam_ema`).
    ema_fake: scalar EMA of mean fake logits.

  Returns:
    Scalar `mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2)`; add it to the
    discriminator loss with a small weight (the paper uses 0.3 or 0.01 scale factors).
  """
  ema_real = jax.lax.stop_gradient(jnp.asarray(ema_real, jnp.float32))
  ema_fake = jax.lax.stop_gradient(jnp.asarray(ema_fake, jnp.float32))
  real = real_logits.astype(jnp.float32)
  fake = fake_logits.astype(jnp.float32)
  return jnp.mean(jnp.square(jax.nn.relu(real - ema_fake))) + jnp.mean(
      jnp.square(jax.nn.relu(ema_real - fake))
  )


def update_lecam_ema(
    ema_real: jax.Array | float,
    ema_fake: jax.Array | float,
    real_logits: jax.Array,
    fake_logits: jax.Array,
    *,
    decay: float = 0.99,
) -> tuple[jax.Array, jax.Array]:
  """One EMA step of the mean real / fake logits that `lecam_regularizer` anchors to.

  Args:
    ema_real: scalar running mean of real logits (start at 0.0).
    ema_fake: scalar running mean of fake logits (start at 0.0).
    real_logits: this step's real logits, any shape.
    fake_logits: this step's fake logits, any shape.
    decay: EMA decay (0.99 in the LeCam reference code).

  Returns:
    `(new_ema_real, new_ema_fake)` float32 scalars, gradient-stopped:
    `decay * ema + (1 - decay) * mean(logits)`.
  """

  def step(ema, logits):
    mean = jnp.mean(jax.lax.stop_gradient(logits).astype(jnp.float32))
    return decay * jnp.asarray(ema, jnp.float32) + (1.0 - decay) * mean

  return step(ema_real, real_logits), step(ema_fake, fake_logits)


def _global_norm(tree: Any) -> jax.Array:
  """L2 norm of all leaves of a pytree (or one array) taken together, in float32."""
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    raise ValueError('adaptive_generator_weight got an empty gradient tree')
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))


def adaptive_generator_weight(
    nll_grads: Any,
    g_grads: Any,
    *,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> jax.Array:
  """Adaptive GAN weight of VQGAN (Esser et al. 2021, taming `calculate_adaptive_weight`).

  Balances the adversarial term against the reconstruction term by the ratio of their
  gradient norms at the decoder's last layer. The caller multiplies the result by the
  configured discriminator weight.

  Args:
    nll_grads: gradient of the reconstruction (+ perceptual) loss w.r.t. the last decoder
      layer's parameters: one array or a pytree (norms are taken over all leaves).
    g_grads: gradient of the generator GAN loss w.r.t. the same parameters.
    max_weight: upper clip (taming: 1e4).
    eps: added to the GAN gradient norm (taming: 1e-4).

  Returns:
    Scalar float32 `clip(||nll_grads|| / (||g_grads|| + eps), 0, max_weight)`, with
    stop_gradient applied (it is a weight, not something to optimise).
  """
  weight = _global_norm(nll_grads) / (_global_norm(g_grads) + eps)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))
