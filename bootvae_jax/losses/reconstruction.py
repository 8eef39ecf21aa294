"""Pixel reconstruction losses.

Both are plain means over every element, computed in float32 so bf16 activations do not
lose precision in the reduction.
"""

import jax
import jax.numpy as jnp


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean absolute error.

  Args:
    x: array of any shape, e.g. a reconstruction `(B, T, H, W, C)` in [-1, 1].
    y: array of the same shape, e.g. the target clip.

  Returns:
    Scalar `mean(|x - y|)` in float32.
  """
  diff = x.astype(jnp.float32) - y.astype(jnp.float32)
  return jnp.mean(jnp.abs(diff))


def l2_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error.

  Args:
    x: array of any shape, e.g. a reconstruction `(B, T, H, W, C)` in [-1, 1].
    y: array of the same shape, e.g. the target clip.

  Returns:
    Scalar `mean((x - y)^2)` in float32.
  """
  diff = x.astype(jnp.float32) - y.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))
