"""Exact values of the pixel losses."""

import jax.numpy as jnp
import numpy as np

from bootvae_jax.losses import l1_loss
from bootvae_jax.losses import l2_loss


def _pair():
  x = jnp.zeros((1, 2, 1, 2, 1), jnp.float32)
  y = jnp.asarray([0.5, -1.0, 0.25, 0.0], jnp.float32).reshape(1, 2, 1, 2, 1)
  return x, y


def test_l1_is_mean_absolute_error():
  x, y = _pair()
  np.testing.assert_allclose(l1_loss(x, y), (0.5 + 1.0 + 0.25 + 0.0) / 4, rtol=1e-7)


def test_l2_is_mean_squared_error():
  x, y = _pair()
  np.testing.assert_allclose(l2_loss(x, y), (0.25 + 1.0 + 0.0625 + 0.0) / 4, rtol=1e-7)


def test_losses_are_float32_scalars_for_bf16_inputs():
  x, y = _pair()
  for loss in (l1_loss, l2_loss):
    out = loss(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
    assert out.shape == () and out.dtype == jnp.float32
    assert float(loss(y, y)) == 0.0
