"""Single-head softmax attention, by the fastest kernel per backend.

`attention(q, k, v)` is softmax(q kᵀ / sqrt(C)) v over axis -2 of q, k, v: (..., N, C), with
float32 logits. On GPU and TPU it is `jax.nn.dot_product_attention` (cuDNN's fused kernel where
it applies); on CPU the two einsums and the softmax written out ("einsum"), which is what XLA:CPU
runs either way without the reshapes to jax.nn's (batch, sequence, heads, channels) layout.
Chosen at trace time, never stored; `forced_implementation` overrides it for tests.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("einsum", "jax_nn")

_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_impl", default=None)


@contextlib.contextmanager
def forced_implementation(name: str) -> Iterator[None]:
  """`attention` traced inside runs implementation `name` (one of `IMPLEMENTATIONS`) whatever
  the backend. It acts at trace time: a function jitted before keeps what it was traced with.
  """
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {name!r}; use one of {IMPLEMENTATIONS}")
  token = _FORCED.set(name)
  try:
    yield
  finally:
    _FORCED.reset(token)


def implementation() -> str:
  """The implementation `attention` traces now: the forced one, else by backend."""
  forced = _FORCED.get()
  if forced is not None:
    return forced
  return "einsum" if jax.default_backend() == "cpu" else "jax_nn"


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
