"""Tests for `bootvae_jax.ops.attention`: both implementations against
`jax.nn.dot_product_attention` and a hand-written numpy softmax."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.ops import attention as attention_ops

TOL = 1e-5


def _normal(seed: int, shape) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _attention(impl, q, k, v):
  with attention_ops.forced_implementation(impl):
    return attention_ops.attention(q, k, v)


@pytest.mark.parametrize("impl", attention_ops.IMPLEMENTATIONS)
def test_attention_equals_jax_nn_dot_product_attention_and_numpy(impl):
  """Over (B, T, N, C) = (2, 3, 7, 5), a sequence of 7 per (b, t): the output, d/dq, d/dk, d/dv
  equal `jax.nn.dot_product_attention` with one head (within 1e-5); the output equals softmax
  written in numpy."""
  q, k, v = (_normal(seed, (2, 3, 7, 5)) for seed in (0, 1, 2))
  cotangent = _normal(3, (2, 3, 7, 5))

  def reference(q, k, v):  # one head: (B·T, N, 1, C)
    flat = lambda a: a.reshape(6, 7, 1, 5)
    return jax.nn.dot_product_attention(flat(q), flat(k), flat(v)).reshape(2, 3, 7, 5)

  expected, expected_vjp = jax.vjp(reference, q, k, v)
  got, got_vjp = jax.vjp(lambda *a: _attention(impl, *a), q, k, v)
  assert got.shape == (2, 3, 7, 5)
  assert float(jnp.max(jnp.abs(got - expected))) <= TOL
  for a, b in zip(got_vjp(cotangent), expected_vjp(cotangent)):
    assert float(jnp.max(jnp.abs(a - b))) <= TOL
  logits = np.einsum("btqc,btkc->btqk", q, k).astype(np.float64) / math.sqrt(5)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  assert float(np.max(np.abs(np.asarray(got) - weights @ v))) <= TOL


def test_attention_over_one_sequence_and_in_bfloat16():
  """A lone (N, C) sequence keeps its shape; bfloat16 inputs give bfloat16 outputs, the two
  implementations within bfloat16 rounding of each other."""
  q, k, v = (_normal(seed, (9, 4)) for seed in (4, 5, 6))
  outs = {impl: _attention(impl, q, k, v) for impl in attention_ops.IMPLEMENTATIONS}
  assert all(o.shape == (9, 4) for o in outs.values())
  assert float(jnp.max(jnp.abs(outs["einsum"] - outs["jax_nn"]))) <= TOL
  low = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)]
  half = {impl: _attention(impl, *low) for impl in attention_ops.IMPLEMENTATIONS}
  assert all(o.dtype == jnp.bfloat16 for o in half.values())
  diff = jnp.abs(half["einsum"].astype(jnp.float32) - half["jax_nn"].astype(jnp.float32))
  assert float(jnp.max(diff)) <= 0.02 * float(jnp.max(jnp.abs(outs["einsum"])))


def test_cpu_runs_einsum_accelerators_jax_nn_unless_forced():
  default = "einsum" if jax.default_backend() == "cpu" else "jax_nn"
  other = "jax_nn" if default == "einsum" else "einsum"
  assert attention_ops.implementation() == default
  with attention_ops.forced_implementation(other):
    assert attention_ops.implementation() == other
  assert attention_ops.implementation() == default
  with pytest.raises(ValueError, match="flash"):
    with attention_ops.forced_implementation("flash"):
      pass
