"""Tests for `bootvae_jax.ops.norm`: the fused norm + SiLU's hand-written backward against
autodiff of its own forward (first and second order) and what it keeps for the backward."""

import jax
from jax import ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.ops import norm as norm_ops

TOL = 1e-5


def _normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _max_err(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def _video(seed, shape=(2, 5, 6, 6, 8)):
  # A per-channel offset so that subtracting the mean (or not) matters.
  return _normal(seed, shape, 2.0) + np.linspace(-1.0, 3.0, shape[-1], dtype=np.float32)


def _fused(x, scale, bias, kind, num_groups, eps, silu):
  """`group_norm` (custom backward) with positional settings, as `_plain`."""
  return norm_ops.group_norm(x, scale, bias, kind=kind, num_groups=num_groups, eps=eps, silu=silu)


def _plain(*args):
  """The same forward, differentiated by plain autodiff."""
  return norm_ops._normalize_forward(*args)[0]


def test_group_norm_statistics_sets_against_numpy():
  """Each kind normalises over its set: (T, H, W, C/G) for the clip, (H, W, C/G) per frame,
  the group RMS without the mean, C alone for layernorm; then the affine and silu."""
  x = _video(1).astype(np.float64)
  scale, bias = 1 + _normal(2, (8,), 0.1), _normal(3, (8,), 0.1)
  g = x.reshape(2, 5, 6, 6, 4, 2)
  expected = {
      "groupnorm_clip": (g - g.mean((1, 2, 3, 5), keepdims=True))
      / np.sqrt(g.var((1, 2, 3, 5), keepdims=True) + 1e-6),
      "groupnorm_frame": (g - g.mean((2, 3, 5), keepdims=True))
      / np.sqrt(g.var((2, 3, 5), keepdims=True) + 1e-6),
      "rmsnorm_frame": g / np.sqrt((g**2).mean((2, 3, 5), keepdims=True) + 1e-6),
      "layernorm": (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6),
  }
  for kind, y in expected.items():
    z = y.reshape(x.shape) * scale + bias
    got = _fused(jnp.asarray(x, jnp.float32), scale, bias, kind, 4, 1e-6, True)
    assert _max_err(got, (z / (1 + np.exp(-z))).astype(np.float32)) <= TOL, kind
  with pytest.raises(ValueError, match="batchnorm"):
    _fused(jnp.asarray(x), scale, bias, "batchnorm", 4, 1e-6, False)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("kind", norm_ops.KINDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_norm_backward_equals_autodiff_of_its_forward(kind, silu, dtype):
  """`group_norm`'s hand-written backward (from x and the statistics) vs plain autodiff of the
  same forward, for x, scale and bias."""
  x = jnp.asarray(_video(6), dtype)
  scale, bias = jnp.asarray(1 + _normal(7, (8,), 0.1)), jnp.asarray(_normal(8, (8,), 0.1))
  cotangent = jnp.asarray(_normal(9, x.shape), dtype)
  args = (kind, 4, 1e-6, silu)
  out, vjp = jax.vjp(lambda *p: _fused(*p, *args), x, scale, bias)
  ref_out, ref_vjp = jax.vjp(lambda *p: _plain(*p, *args), x, scale, bias)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2  # bfloat16: dx rounds to 8 bits either way
  assert _max_err(out, ref_out) <= tol * float(jnp.max(jnp.abs(ref_out.astype(jnp.float32))))
  for got, expected in zip(vjp(cotangent), ref_vjp(cotangent)):
    scale_of = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
    assert _max_err(got, expected) <= tol * scale_of


def test_norm_second_order_gradients_equal_autodiff():
  """d/dx of |d/dscale|² through `group_norm` (reverse over its own backward), as the adaptive
  GAN weight's gradients of gradients need, vs autodiff of the plain forward."""
  x = jnp.asarray(_video(13))
  scale, bias = jnp.asarray(1 + _normal(14, (8,), 0.1)), jnp.asarray(_normal(15, (8,), 0.1))
  for kind in norm_ops.KINDS:
    loss = lambda norm: lambda x, s: jnp.sum(jnp.sin(norm(x, s, bias, kind, 4, 1e-6, True)))
    second = lambda f: jax.jit(jax.grad(lambda x, s: jnp.sum(jax.grad(f, 1)(x, s) ** 2)))(x, scale)
    reference = second(loss(_plain))
    got = second(loss(_fused))
    assert _max_err(got, reference) <= TOL * float(jnp.max(jnp.abs(reference))), kind


def test_norm_keeps_only_its_input_for_the_backward(capsys):
  """Autodiff of norm + silu keeps six activation-sized arrays for the backward; `group_norm`
  keeps x (and the per-group statistics)."""
  x = jnp.asarray(_video(12))
  scale, bias = jnp.ones(8), jnp.zeros(8)
  activation = f"f32[{','.join(map(str, x.shape))}]"

  def kept(forward):
    ad_checkpoint.print_saved_residuals(lambda *p: forward(*p).sum(), x, scale, bias)
    return [line for line in capsys.readouterr().out.splitlines() if activation in line]

  args = ("groupnorm_clip", 4, 1e-6, True)
  assert len(kept(lambda *p: _plain(*p, *args))) == 6
  (only,) = kept(lambda *p: _fused(*p, *args))
  assert "argument" in only
