"""Tests for `bootvae_jax.models.layers`, each layer against an independent reference.

References: `torch.nn.functional.conv3d` / `GroupNorm` / `LayerNorm` / `interpolate` (CPU,
float32) and hand-written numpy for the mean-free RMS norm, the index rules of the
depth-to-time / depth-to-space shuffles and softmax attention.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from bootvae_jax.models import layers
from bootvae_jax.ops import conv as conv_ops

STRIDES = [(1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 1, 1)]
TIME_PADDINGS = ["causal", "centred", "replicate_both", "none"]
SPATIAL_PADDINGS = ["same", "bottom_right"]
TOL = 1e-5
IMPLS = conv_ops.IMPLEMENTATIONS


def _normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _max_err(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def _torch_conv_reference(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    *,
    stride,
    time_pad: tuple[int, int, str],
    spatial_pad,
) -> np.ndarray:
  """The same convolution written with PyTorch ops, NCTHW inside, NTHWC at the boundary."""
  front, back, mode = time_pad
  (top, bottom), (left, right) = spatial_pad
  xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
  parts = []
  if front:
    parts.append(
        xt[:, :, :1].repeat(1, 1, front, 1, 1)
        if mode == "replicate"
        else torch.zeros_like(xt[:, :, :1]).repeat(1, 1, front, 1, 1)
    )
  parts.append(xt)
  if back:
    parts.append(
        xt[:, :, -1:].repeat(1, 1, back, 1, 1)
        if mode == "replicate"
        else torch.zeros_like(xt[:, :, -1:]).repeat(1, 1, back, 1, 1)
    )
  xt = torch.cat(parts, dim=2)
  xt = F.pad(xt, (left, right, top, bottom))  # zero padding in space (W first, then H)
  wt = torch.from_numpy(kernel).permute(4, 3, 0, 1, 2)  # (out, in, kt, kh, kw)
  bt = None if bias is None else torch.from_numpy(bias)
  y = F.conv3d(xt, wt, bt, stride=stride)
  return y.permute(0, 2, 3, 4, 1).numpy()


# ----------------------------------------------------------------------------------------------
# (a) The conv module under every implementation of `ops.conv`: equal forward and gradients.


def _spatial_shape(spatial: str, size: int, stride: int) -> int:
  extra = {"same": 2, "bottom_right": 1}[spatial]  # zero rows added around a 3-wide kernel
  return (size + extra - 3) // stride + 1


@pytest.mark.parametrize("time_padding", TIME_PADDINGS)
def test_conv3d_module_impls_agree_in_forward_and_gradients(time_padding):
  """`Conv3d` traced with `ops.conv` implementation "xla" vs the others, for kt in {1, 3} x
  every stride x spatial padding: output, d/dx, d/dkernel, d/dbias within 1e-5; the output
  equals torch's conv3d on the input padded in time by hand (first/last frame copies or
  zeros)."""
  x = _normal(3, (1, 9, 8, 8, 3))
  cases = list(itertools.product((1, 3), STRIDES, SPATIAL_PADDINGS))
  models, shapes = {}, {}
  for kt, stride, spatial in cases:
    models[(kt, stride, spatial)] = layers.Conv3d(
        3,
        4,
        (kt, 3, 3),
        stride=stride,
        time_padding=time_padding,
        spatial_padding=spatial,
        rngs=nnx.Rngs(kt),
    )
    # Frames added by the padding rule for kt = 3 (a kt = 1 conv pads nothing).
    added = {"causal": 2, "centred": 2, "replicate_both": 2, "none": 0}[time_padding]
    shapes[(kt, stride, spatial)] = (
        1,
        (9 + (added if kt == 3 else 0) - kt) // stride[0] + 1,
        _spatial_shape(spatial, 8, stride[1]),
        _spatial_shape(spatial, 8, stride[2]),
        4,
    )
  graphdefs = {key: nnx.split(m)[0] for key, m in models.items()}
  params = {key: nnx.split(m)[1] for key, m in models.items()}
  cotangents = {case: _normal(4, shape, scale=0.1) for case, shape in shapes.items()}

  @jax.jit
  def forward_and_vjp(params, x, cotangents):
    out = {}
    for (case, graphdef), impl in itertools.product(graphdefs.items(), IMPLS):
      with conv_ops.forced_implementation(impl):
        y, vjp = jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), params[case], x)
        dparams, dx = vjp(cotangents[case])
      out[case + (impl,)] = (y, dx, dparams["kernel"][...], dparams["bias"][...])
    return out

  out = forward_and_vjp(params, x, cotangents)
  failures = []
  for kt, stride, spatial in cases:
    name = f"kt={kt} stride={stride} {spatial}"
    xla = out[(kt, stride, spatial, "xla")]
    if xla[0].shape != shapes[(kt, stride, spatial)]:
      failures.append(f"{name}: shape {xla[0].shape} != {shapes[(kt, stride, spatial)]}")
    for impl in IMPLS[1:]:
      for what, a, b in zip(("y", "dx", "dkernel", "dbias"), xla, out[(kt, stride, spatial, impl)]):
        if (err := _max_err(a, b)) > TOL:
          failures.append(f"{name} {impl}: {what} differs by {err:.2e}")
    conv = models[(kt, stride, spatial)]
    reference = _torch_conv_reference(
        x,
        np.array(conv.kernel[...]),
        np.array(conv.bias[...]),
        stride=stride,
        time_pad=layers.time_padding_amounts(time_padding if kt == 3 else "none", kt),
        spatial_pad=layers.spatial_padding_amounts(spatial, 3, 3),
    )
    if (err := _max_err(xla[0], reference)) > TOL:
      failures.append(f"{name}: torch reference differs by {err:.2e}")
  assert not failures, "\n".join(failures)


def test_time_padding_rules():
  assert layers.time_padding_amounts("causal", 3) == (2, 0, "replicate")
  assert layers.time_padding_amounts("causal", 1) == (0, 0, "replicate")
  assert layers.time_padding_amounts("centred", 3) == (1, 1, "zeros")
  assert layers.time_padding_amounts("replicate_both", 3) == (1, 1, "replicate")
  assert layers.time_padding_amounts("none", 3) == (0, 0, "zeros")
  x = jnp.arange(3.0).reshape(1, 3, 1, 1, 1)
  np.testing.assert_array_equal(
      layers.pad_time(x, 2, 1, "replicate")[0, :, 0, 0, 0], [0, 0, 0, 1, 2, 2]
  )
  np.testing.assert_array_equal(
      layers.pad_time(x, 1, 2, "zeros")[0, :, 0, 0, 0], [0, 0, 1, 2, 0, 0]
  )
  with pytest.raises(ValueError, match="time_padding"):
    layers.time_padding_amounts("reflect", 3)
  with pytest.raises(ValueError, match="spatial_padding"):
    layers.spatial_padding_amounts("reflect", 3, 3)


# ----------------------------------------------------------------------------------------------
# (b) Causality of the causal conv.


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("stride_t", [1, 2])
def test_causal_conv_never_reads_future_frames(impl, stride_t):
  conv = layers.Conv3d(
      3,
      4,
      (3, 3, 3),
      stride=(stride_t, 1, 1),
      time_padding="causal",
      rngs=nnx.Rngs(0),
  )

  jitted = nnx.jit(lambda m, x: m(x))  # a new function: traced by this test alone

  def run(conv, x):
    with conv_ops.forced_implementation(impl):
      return jitted(conv, x)

  x = _normal(5, (1, 9, 8, 8, 3))
  y = np.asarray(run(conv, x))
  for t in (1, 4, 8):
    x2 = x.copy()
    x2[:, t] += 1.0
    y2 = np.asarray(run(conv, x2))
    # Output frame j reads input frames stride_t*j - 2 .. stride_t*j; the first that sees t:
    first = math.ceil(t / stride_t)
    np.testing.assert_array_equal(y2[:, :first], y[:, :first])
    assert np.abs(y2[:, first] - y[:, first]).max() > 1e-2


def test_centred_conv_does_read_the_next_frame():
  """The same check detects a leak: a centred conv's frame t-1 sees frame t."""
  conv = layers.Conv3d(3, 4, (3, 3, 3), time_padding="centred", rngs=nnx.Rngs(0))
  x = _normal(5, (1, 9, 8, 8, 3))
  x2 = x.copy()
  x2[:, 4] += 1.0
  y, y2 = np.asarray(conv(x)), np.asarray(conv(x2))
  np.testing.assert_array_equal(y2[:, :3], y[:, :3])
  assert np.abs(y2[:, 3] - y[:, 3]).max() > 1e-2


@pytest.mark.parametrize(
    "time_padding, stride_t", [("causal", 1), ("causal", 2), ("centred", 1), ("replicate_both", 1)]
)
def test_current_frame_init_makes_a_3d_conv_the_2d_conv_of_its_frame(time_padding, stride_t):
  """kernel_init="current_frame": only the tap that reads the output's own frame is drawn
  (He-normal over kh·kw·Cin), the rest and the bias are zero, so the conv is per frame."""
  conv = layers.Conv3d(
      16,
      32,
      (3, 3, 3),
      stride=(stride_t, 1, 1),
      time_padding=time_padding,
      kernel_init="current_frame",
      rngs=nnx.Rngs(0),
  )
  kernel = np.asarray(conv.kernel[...])
  tap = {"causal": 2, "centred": 1, "replicate_both": 1}[time_padding]
  assert layers.current_frame_tap(time_padding, 3) == tap
  others = [i for i in range(3) if i != tap]
  np.testing.assert_array_equal(kernel[others], 0.0)
  np.testing.assert_array_equal(np.asarray(conv.bias[...]), 0.0)
  assert abs(kernel[tap].std() / math.sqrt(2.0 / (9 * 16)) - 1) < 0.05
  x = _normal(3, (1, 9, 8, 8, 16))
  frames = x[:, ::stride_t]
  per_frame = jax.lax.conv_general_dilated(
      frames[0], kernel[tap], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(np.asarray(conv(x))[0], per_frame, atol=1e-5)


def test_torch_init_and_init_scale():
  """The default stays PyTorch's uniform ±1/sqrt(fan_in) (biases too); `init_scale` multiplies
  the kernel of the same draw."""
  make = lambda scale: layers.Conv3d(8, 4, (3, 3, 3), init_scale=scale, rngs=nnx.Rngs(0))
  conv, small = make(1.0), make(0.1)
  bound = 1 / math.sqrt(8 * 27)
  kernel = np.asarray(conv.kernel[...])
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  assert np.abs(np.asarray(conv.bias[...])).max() > 0
  np.testing.assert_allclose(np.asarray(small.kernel[...]), 0.1 * kernel, rtol=1e-6)
  with pytest.raises(ValueError, match="kernel_init 'xavier'"):
    layers.Conv3d(8, 4, kernel_init="xavier", rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------
# (c) Norms.


def _norm(kind, channels, groups, eps, seed=0):
  norm = layers.Norm(channels, kind, num_groups=groups, eps=eps, rngs=nnx.Rngs(0))
  norm.scale.set_value(jnp.asarray(1 + _normal(seed, (channels,), 0.1)))
  norm.bias.set_value(jnp.asarray(_normal(seed + 1, (channels,), 0.1)))
  return norm


def _video(seed, shape=(2, 5, 6, 6, 8)):
  # A per-channel offset so that subtracting the mean (or not) matters.
  return _normal(seed, shape, 2.0) + np.linspace(-1.0, 3.0, shape[-1], dtype=np.float32)


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_groupnorm_clip_equals_torch_groupnorm_over_the_whole_clip(eps):
  norm = _norm("groupnorm_clip", 8, 4, eps)
  x = _video(0)
  ref = torch.nn.GroupNorm(4, 8, eps=eps)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
    ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
    expected = ref(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).numpy()
  assert _max_err(norm(x), expected) <= TOL


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_groupnorm_frame_equals_torch_groupnorm_per_frame(eps):
  norm = _norm("groupnorm_frame", 8, 4, eps)
  x = _video(1)
  b, t, h, w, c = x.shape
  ref = torch.nn.GroupNorm(4, 8, eps=eps)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
    ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
    frames = torch.from_numpy(x.reshape(b * t, h, w, c)).permute(0, 3, 1, 2)
    expected = ref(frames).permute(0, 2, 3, 1).reshape(b, t, h, w, c).numpy()
  assert _max_err(norm(x), expected) <= TOL


def test_rmsnorm_frame_divides_by_group_rms_without_subtracting_the_mean():
  eps = 1e-6
  norm = _norm("rmsnorm_frame", 8, 4, eps)
  x = _video(2)
  b, t, h, w, c = x.shape
  g = x.astype(np.float64).reshape(b, t, h, w, 4, c // 4)
  ms = np.mean(g**2, axis=(2, 3, 5), keepdims=True)
  expected = (g / np.sqrt(ms + eps)).reshape(x.shape)
  expected = expected * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])
  assert _max_err(norm(x), expected.astype(np.float32)) <= TOL
  # Not a GroupNorm: with a non-zero mean the two differ by O(1).
  assert _max_err(norm(x), _norm("groupnorm_frame", 8, 4, eps)(x)) > 0.1


def test_layernorm_equals_torch_layernorm():
  norm = _norm("layernorm", 8, 4, 1e-5)
  x = _video(3)
  ref = torch.nn.LayerNorm(8, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
    ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
    expected = ref(torch.from_numpy(x)).numpy()
  assert _max_err(norm(x), expected) <= TOL


@pytest.mark.parametrize(
    "kind,frame_local",
    [("groupnorm_clip", False), ("groupnorm_frame", True), ("rmsnorm_frame", True)],
)
def test_per_frame_norms_keep_frames_independent(kind, frame_local):
  norm = _norm(kind, 8, 4, 1e-6)
  x = _video(4)
  x2 = x.copy()
  x2[:, 3] *= 3.0
  changed = _max_err(norm(x)[:, :3], norm(x2)[:, :3])
  assert (changed == 0.0) if frame_local else (changed > 1e-3)


def test_norm_keeps_bfloat16_dtype_and_rejects_indivisible_groups():
  norm = _norm("groupnorm_frame", 8, 4, 1e-6)
  x = _video(5)
  y16 = norm(jnp.asarray(x, jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  assert _max_err(np.asarray(y16, np.float32), norm(x)) < 0.05
  with pytest.raises(ValueError, match="divisible by 4"):
    layers.Norm(10, "groupnorm_frame", num_groups=4, rngs=nnx.Rngs(0))


def test_groupnorm_silu_gradients_equal_torch_autograd():
  norm = _norm("groupnorm_clip", 8, 4, 1e-6)
  x, cotangent = _video(10), _normal(11, (2, 5, 6, 6, 8))
  grads = jax.grad(lambda m, x: jnp.vdot(m(x, silu=True), cotangent), argnums=(0, 1))
  model_grads, x_grad = grads(norm, jnp.asarray(x))
  ref = torch.nn.GroupNorm(4, 8, eps=1e-6)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(np.asarray(norm.scale[...])))
    ref.bias.copy_(torch.tensor(np.asarray(norm.bias[...])))
  x_t = torch.from_numpy(x).permute(0, 4, 1, 2, 3).requires_grad_()
  y_t = F.silu(ref(x_t))
  (y_t * torch.from_numpy(cotangent).permute(0, 4, 1, 2, 3)).sum().backward()
  assert _max_err(x_grad, x_t.grad.permute(0, 2, 3, 4, 1).numpy()) <= TOL
  assert _max_err(model_grads.scale[...], ref.weight.grad.numpy()) <= 10 * TOL  # sums 360 terms
  assert _max_err(model_grads.bias[...], ref.bias.grad.numpy()) <= 10 * TOL


# ----------------------------------------------------------------------------------------------
# (d) Resampling helpers.


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("axis", [1, 2, 3])
def test_linear_upsample_2x_equals_torch_linear_interpolate(n, axis):
  shape = [2, 3, 4, 5, 3]
  shape[axis] = n
  x = _normal(6, shape)
  moved = np.moveaxis(x, axis, -1)  # (..., n)
  flat = torch.from_numpy(np.ascontiguousarray(moved.reshape(1, -1, n)))
  ref = F.interpolate(flat, scale_factor=2, mode="linear", align_corners=False).numpy()
  expected = np.moveaxis(ref.reshape(moved.shape[:-1] + (2 * n,)), -1, axis)
  assert _max_err(layers.linear_upsample_2x(x, axis), expected) <= TOL


def test_linear_upsample_2x_in_space_and_time_equals_torch_bilinear_and_trilinear():
  x = _normal(7, (2, 4, 5, 3, 6))
  xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
  # Bilinear on every frame.
  frames = xt.permute(0, 2, 1, 3, 4).reshape(8, 6, 5, 3)
  bilinear = F.interpolate(frames, scale_factor=2, mode="bilinear", align_corners=False)
  expected = bilinear.reshape(2, 4, 6, 10, 6).permute(0, 1, 3, 4, 2).numpy()
  ours = layers.linear_upsample_2x(layers.linear_upsample_2x(x, 2), 3)
  assert _max_err(ours, expected) <= TOL
  trilinear = F.interpolate(xt, scale_factor=2, mode="trilinear", align_corners=False)
  assert (
      _max_err(layers.linear_upsample_2x(ours, 1), trilinear.permute(0, 2, 3, 4, 1).numpy()) <= TOL
  )


def test_linear_upsample_2x_weights_from_the_spec():
  # n = 4: j=0 -> in[0]; j=1 -> .75 in[0] + .25 in[1]; j=2 -> .25 in[0] + .75 in[1]; j=7 -> in[3].
  x = jnp.asarray([1.0, 10.0, 100.0, 1000.0]).reshape(1, 4, 1, 1, 1)
  y = np.asarray(layers.linear_upsample_2x(x, 1)).ravel()
  np.testing.assert_allclose(y[:3], [1.0, 3.25, 7.75], rtol=1e-6)
  assert y[7] == 1000.0


def test_nearest_upsample_space_index_rule():
  x = np.arange(2 * 2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 2, 3, 4, 2)
  y = np.asarray(layers.nearest_upsample_space(x))
  assert y.shape == (2, 2, 6, 8, 2)
  for i, j in itertools.product(range(6), range(8)):
    np.testing.assert_array_equal(y[:, :, i, j], x[:, :, i // 2, j // 2])


@pytest.mark.parametrize("factor", [2, 4])
def test_depth_to_time_index_rule(factor):
  c = 3
  x = np.arange(2 * 3 * 2 * 2 * factor * c, dtype=np.float32).reshape(2, 3, 2, 2, factor * c)
  y = np.asarray(layers.depth_to_time(x, factor))
  assert y.shape == (2, 3 * factor, 2, 2, c)
  for t, s in itertools.product(range(3), range(factor)):
    np.testing.assert_array_equal(y[:, factor * t + s], x[:, t, :, :, s * c : (s + 1) * c])


@pytest.mark.parametrize("factor", [2, 3])
def test_depth_to_space_index_rule(factor):
  c = 2
  x = np.arange(1 * 2 * 3 * 2 * factor * factor * c, dtype=np.float32).reshape(
      1, 2, 3, 2, factor * factor * c
  )
  y = np.asarray(layers.depth_to_space(x, factor))
  assert y.shape == (1, 2, 3 * factor, 2 * factor, c)
  for h, w, fy, fx in itertools.product(range(3), range(2), range(factor), range(factor)):
    group = fy * factor + fx  # channels ordered (fy, fx, C)
    np.testing.assert_array_equal(
        y[:, :, factor * h + fy, factor * w + fx], x[:, :, h, w, group * c : (group + 1) * c]
    )


# ----------------------------------------------------------------------------------------------
# (e) Attention.


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _pointwise(conv, x):
  kernel = np.asarray(conv.kernel[...], np.float64)[0, 0, 0]
  return x @ kernel + np.asarray(conv.bias[...], np.float64)


def _groupnorm_frame_np(norm, x, groups):
  b, t, h, w, c = x.shape
  g = x.reshape(b, t, h, w, groups, c // groups)
  mean = g.mean((2, 3, 5), keepdims=True)
  var = ((g - mean) ** 2).mean((2, 3, 5), keepdims=True)
  y = ((g - mean) / np.sqrt(var + norm.eps)).reshape(x.shape)
  return y * np.asarray(norm.scale[...], np.float64) + np.asarray(norm.bias[...], np.float64)


def _spatial_attention_np(attn, x, groups):
  """softmax(q kᵀ / sqrt(C)) v over the H·W positions of each frame, proj_out, no residual."""
  b, t, h, w, c = x.shape
  hn = _groupnorm_frame_np(attn.norm, x, groups)
  q, k, v = (_pointwise(m, hn).reshape(b, t, h * w, c) for m in (attn.q, attn.k, attn.v))
  weights = _softmax(np.einsum("btqc,btkc->btqk", q, k) / math.sqrt(c))
  a = np.einsum("btqk,btkc->btqc", weights, v).reshape(b, t, h, w, c)
  return _pointwise(attn.proj_out, a)


@pytest.mark.parametrize("residual", [True, False])
def test_spatial_attention_equals_handwritten_softmax(residual):
  attn = layers.SpatialAttention(
      8, norm="groupnorm_frame", num_groups=4, eps=1e-6, residual=residual, rngs=nnx.Rngs(0)
  )
  attn.norm.scale.set_value(jnp.asarray(1 + _normal(10, (8,), 0.1)))
  x = _normal(8, (2, 3, 4, 5, 8))
  expected = _spatial_attention_np(attn, x.astype(np.float64), 4)
  if residual:
    expected = expected + x
  assert _max_err(attn(x), expected.astype(np.float32)) <= TOL


def test_spatio_temporal_attention_equals_handwritten_softmax():
  attn = layers.SpatioTemporalAttention(
      8, norm="groupnorm_frame", num_groups=4, eps=1e-6, rngs=nnx.Rngs(0)
  )
  x = _normal(9, (1, 5, 3, 4, 8)).astype(np.float64)
  s = _spatial_attention_np(attn.spatial, x, 4)
  u = np.moveaxis(s, 1, 3)  # (B, H, W, T, C)
  u = (u - u.mean(-1, keepdims=True)) / np.sqrt(u.var(-1, keepdims=True) + 1e-5)
  dense = lambda m, z: z @ np.asarray(m.kernel[...], np.float64) + np.asarray(m.bias[...])
  q, k, v = dense(attn.q_t, u), dense(attn.k_t, u), dense(attn.v_t, u)
  a = _softmax(np.einsum("...qc,...kc->...qk", q, k) / math.sqrt(8)) @ v
  expected = x + np.moveaxis(dense(attn.proj_out_t, a), 3, 1)
  assert _max_err(attn(x.astype(np.float32)), expected.astype(np.float32)) <= TOL
