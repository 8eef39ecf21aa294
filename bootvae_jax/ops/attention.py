"""Single-head softmax attention, by the fastest kernel per backend.

`attention(q, k, v)` is softmax(q kᵀ / sqrt(C)) v over axis -2 of q, k, v: (..., N, C), with
float32 logits. On GPU and TPU it is `jax.nn.dot_product_attention` (cuDNN's fused kernel where
it applies); on CPU the two einsums and the softmax written out ("einsum"), which is what XLA:CPU
runs either way without the reshapes to jax.nn's (batch, sequence, heads, channels) layout.
Chosen at trace time for the platform compiled for (`backend`); `forced_implementation`
overrides it for tests.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bootvae_jax.ops import backend

IMPLEMENTATIONS = ("einsum", "jax_nn")

_CHOICE = backend.Choice("attention", IMPLEMENTATIONS, cpu="einsum", accelerator="jax_nn")
forced_implementation = _CHOICE.forced  # `backend.Choice.forced`
implementation = _CHOICE.current


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Single-head softmax(q kᵀ / sqrt(C)) v over axis -2. q, k, v: (..., N, C) → (..., N, C)."""
  if implementation() == "jax_nn":
    batch = q.shape[:-2]
    flat = lambda a: a.reshape((math.prod(batch),) + a.shape[-2:-1] + (1, a.shape[-1]))
    out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v))
    return out.reshape(batch + out.shape[1:2] + out.shape[-1:])
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("...qc,...kc->...qk", q, k, preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("...qk,...kc->...qc", weights, v)
