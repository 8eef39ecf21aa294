"""Tests for `bootvae_jax.ops.conv`: every formulation of the valid-in-time 3D conv against
`jax.lax.conv_general_dilated` (and PyTorch's conv3d), forward, d/dx and d/dkernel, and where
the CPU selection runs which one."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bootvae_jax.ops import attention as attention_ops
from bootvae_jax.ops import backend
from bootvae_jax.ops import conv as conv_ops

STRIDES = [(1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 1, 1)]
SPATIAL_PADDINGS = {"same": ((1, 1), (1, 1)), "bottom_right": ((0, 1), (0, 1))}  # 3×3 kernels
IMPLS = conv_ops.IMPLEMENTATIONS
TOL = 1e-5


def _normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _max_err(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def _spatial_shape(spatial: str, size: int, stride: int) -> int:
  extra = {"same": 2, "bottom_right": 1}[spatial]  # zero rows added around a 3-wide kernel
  return (size + extra - 3) // stride + 1


def _conv(impl: str, stride, spatial_padding):
  """(x, kernel) ↦ `conv3d` traced with implementation `impl`."""

  def conv(x, kernel):
    with conv_ops.forced_implementation(impl):
      return conv_ops.conv3d(x, kernel, stride=stride, spatial_padding=spatial_padding)

  return conv


def _torch_conv3d(x: np.ndarray, kernel: np.ndarray, stride, spatial_padding) -> np.ndarray:
  """The conv (no time padding) by PyTorch, NCTHW inside, NTHWC at the boundary."""
  (top, bottom), (left, right) = spatial_padding
  xt = F.pad(torch.from_numpy(x).permute(0, 4, 1, 2, 3), (left, right, top, bottom))
  wt = torch.from_numpy(kernel).permute(4, 3, 0, 1, 2)  # (out, in, kt, kh, kw)
  return F.conv3d(xt, wt, stride=stride).permute(0, 2, 3, 4, 1).numpy()


def test_each_cpu_formulation_equals_lax_conv_general_dilated_on_a_tiny_case():
  """`conv3d_by_formulation` (plain autodiff) and `conv3d` (custom backward) of every CPU
  formulation vs `jax.lax.conv_general_dilated` called directly: forward, d/dx, d/dkernel."""
  x = _normal(20, (1, 5, 6, 6, 2))
  kernel = _normal(21, (3, 3, 3, 2, 3), scale=0.3)
  cotangent = _normal(22, (1, 3, 6, 6, 3))
  padding = SPATIAL_PADDINGS["same"]
  lax_conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1, 1), ((0, 0),) + padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )
  y, vjp = jax.vjp(lax_conv, x, kernel)
  reference = (y,) + vjp(cotangent)
  for impl in IMPLS[1:]:
    plain = lambda x, k, impl=impl: conv_ops.conv3d_by_formulation(x, k, (1, 1, 1), padding, impl)
    for name, fn in (("autodiff", plain), ("custom", _conv(impl, (1, 1, 1), padding))):
      y, vjp = jax.vjp(fn, x, kernel)
      for what, a, b in zip(("y", "dx", "dkernel"), reference, (y,) + vjp(cotangent)):
        assert _max_err(a, b) <= TOL, (impl, name, what)


def test_default_implementation_by_backend_and_forced():
  """CPU runs the "winograd" selection, GPU / TPU the XLA conv, unless an implementation is
  forced (for the trace inside the context only); an unknown name is refused."""
  default = "winograd" if jax.default_backend() == "cpu" else "xla"
  assert conv_ops.implementation() == default
  with conv_ops.forced_implementation("stacked"):
    assert conv_ops.implementation() == "stacked"
    with conv_ops.forced_implementation("summed"):
      assert conv_ops.implementation() == "summed"
    assert conv_ops.implementation() == "stacked"
  assert conv_ops.implementation() == default
  with pytest.raises(ValueError, match="cudnn"):
    with conv_ops.forced_implementation("cudnn"):
      pass


def test_impls_agree_with_each_other_and_torch():
  """Every implementation (`conv_ops.IMPLEMENTATIONS`) vs "xla" for every kt x stride x spatial
  padding: forward, d/dx and d/dkernel (through a random cotangent) within 1e-5; the forward
  also equals torch's conv3d."""
  x = _normal(0, (2, 7, 8, 8, 3))
  kernels = {kt: _normal(kt, (kt, 3, 3, 3, 4), scale=0.2) for kt in (1, 3)}
  cases = list(itertools.product((1, 3), STRIDES, SPATIAL_PADDINGS))
  shapes = {
      (kt, st, sp): (
          2,
          (7 - kt) // st[0] + 1,
          _spatial_shape(sp, 8, st[1]),
          _spatial_shape(sp, 8, st[2]),
          4,
      )
      for kt, st, sp in cases
  }
  cotangents = {case: _normal(2, shape, scale=0.1) for case, shape in shapes.items()}

  @jax.jit
  def forward_and_vjp(x, kernels, cotangents):
    out = {}
    for kt, stride, spatial in cases:
      for impl in IMPLS:
        conv = _conv(impl, stride, SPATIAL_PADDINGS[spatial])
        y, vjp = jax.vjp(conv, x, kernels[kt])
        out[(kt, stride, spatial, impl)] = (y,) + vjp(cotangents[(kt, stride, spatial)])
    return out

  out = forward_and_vjp(x, kernels, cotangents)
  failures = []
  for kt, stride, spatial in cases:
    xla = out[(kt, stride, spatial, "xla")]
    if xla[0].shape != shapes[(kt, stride, spatial)]:
      failures.append(f"kt={kt} stride={stride} {spatial}: shape {xla[0].shape}")
    reference = _torch_conv3d(x, kernels[kt], stride, SPATIAL_PADDINGS[spatial])
    for impl in IMPLS[1:]:
      other = out[(kt, stride, spatial, impl)]
      for name, a, b in zip(("y", "dx", "dkernel"), xla, other):
        if (err := _max_err(a, b)) > TOL:
          failures.append(f"kt={kt} stride={stride} {spatial} {impl}: {name} differs by {err:.2e}")
      if (err := _max_err(other[0], reference)) > TOL:
        failures.append(f"kt={kt} stride={stride} {spatial} {impl}: torch differs by {err:.2e}")
  assert not failures, "\n".join(failures)


@pytest.mark.parametrize("tile", sorted(conv_ops.WINOGRAD_TRANSFORMS))
def test_winograd_conv_on_odd_sizes_and_time_strides(tile, monkeypatch):
  """The Winograd path itself (3×3, stride 1 in space), F(2×2) and F(4×4), on odd frame sizes
  (padded rows / columns, cropped) and time strides 1 and 2: output, autodiff gradients and
  `winograd_kernel_grad` (whole, and in strips of tile rows) equal the XLA conv within 1e-5 of
  their scale (F(4×4)'s transforms round ~10x more than F(2×2)'s)."""
  x = _normal(6, (2, 7, 7, 9, 5))
  kernel = _normal(7, (3, 3, 3, 5, 4), scale=0.2)
  pad = ((1, 1), (1, 1))

  @jax.jit
  def both(x, kernel):
    out = {}
    for st in (1, 2):
      ref = _conv("xla", (st, 1, 1), pad)
      win = lambda x, k, st=st: conv_ops.winograd_conv(x, k, time_stride=st, tile=tile)
      for name, fn in (("xla", ref), ("winograd", win)):
        y, vjp = jax.vjp(fn, x, kernel)
        out[(st, name)] = (y,) + vjp(0.05 * jnp.cos(y))
    return out

  out = both(x, kernel)
  for st in (1, 2):
    assert out[(st, "winograd")][0].shape == (2, (7 - 3) // st + 1, 7, 9, 4)
    for what, a, b in zip(("y", "dx", "dkernel"), out[(st, "xla")], out[(st, "winograd")]):
      scale = max(1.0, float(np.max(np.abs(a))))
      assert _max_err(a, b) <= TOL * scale, (st, what, _max_err(a, b), scale)
    # The custom backward's kernel gradient: the same transforms, transposed by hand, in one
    # block and in strips of one tile row.
    cotangent = 0.05 * jnp.cos(out[(st, "xla")][0])
    reference = out[(st, "xla")][2]
    scale = max(1.0, float(np.max(np.abs(reference))))
    for block_bytes in (2**30, 1):
      monkeypatch.setattr(conv_ops, "WINOGRAD_KERNEL_GRAD_BLOCK_BYTES", block_bytes)
      by_hand = conv_ops.winograd_kernel_grad(x, cotangent, kernel.shape, time_stride=st, tile=tile)
      assert _max_err(reference, by_hand) <= TOL * scale, (st, block_bytes, scale)


def test_winograd_tile_follows_dtype_and_frame_size():
  """F(4×4) in float32 on frames of at least 32², F(2×2) on smaller frames and in bfloat16
  (whose rounding F(4×4)'s transforms would amplify)."""
  assert conv_ops.winograd_tile(jnp.float32, (32, 48)) == 4
  assert conv_ops.winograd_tile(jnp.float32, (16, 64)) == 2
  assert conv_ops.winograd_tile(jnp.bfloat16, (128, 128)) == 2


def _primitive_names(jaxpr) -> set[str]:
  """The primitives of `jaxpr` and of the jaxprs inside it (the custom-gradient conv's body)."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        names |= _primitive_names(inner)
  return names


def test_winograd_is_used_where_it_pays():
  """The "winograd" implementation runs `winograd_conv` (no conv primitive left) for 3×3 stride-1
  `same` convs with >= 256 input channels over >= 2048 output tiles or >= 128 input channels
  on frames of at least 64², one im2col product for outputs of at most 8×8, the summed convs
  elsewhere (checked on the jaxpr of abstract inputs: nothing is computed)."""
  same = ((1, 1), (1, 1))

  def primitives(x_shape, kernel_shape, stride=(1, 1, 1), padding=same):
    fn = _conv("winograd", stride, padding)
    jaxpr = jax.make_jaxpr(fn)(
        jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    )
    return _primitive_names(jaxpr.jaxpr)

  big = (1, 11, 32, 32, 256)  # 9 output frames x 16 x 16 tiles = 2304
  assert "conv_general_dilated" not in primitives(big, (3, 3, 3, 256, 128))
  assert "dot_general" in primitives(big, (3, 3, 3, 256, 128))
  assert conv_ops.winograd_applies(big, (3, 3, 3, 256, 64), (1, 1, 1), same)
  large = (1, 3, 64, 64, 128)  # 1 output frame, but 64² frames: from 128 channels
  assert "conv_general_dilated" not in primitives(large, (3, 3, 3, 128, 128))
  small = (1, 5, 8, 8, 512)  # 8² frames: one matrix product over whole patches
  assert "conv_general_dilated" not in primitives(small, (3, 3, 3, 512, 512))
  assert conv_ops.formulation("winograd", small, (3, 3, 3, 512, 512), (1, 1, 1), same) == "im2col"
  downsample = ((1, 5, 16, 16, 512), (3, 3, 3, 512, 512), (2, 2, 2), ((0, 1), (0, 1)))
  assert conv_ops.formulation("winograd", *downsample) == "im2col"  # to 8² frames
  assert conv_ops.formulation("summed", small, (3, 3, 3, 512, 512), (1, 1, 1), same) == "summed"
  for x_shape, kernel_shape, stride, padding in [
      ((1, 11, 32, 32, 128), (3, 3, 3, 128, 128), (1, 1, 1), same),  # too few channels
      ((1, 3, 64, 64, 64), (3, 3, 3, 64, 64), (1, 1, 1), same),  # too few for 64² either
      ((1, 7, 16, 16, 512), (3, 3, 3, 512, 512), (1, 1, 1), same),  # too few tiles
      (big, (3, 3, 3, 256, 3), (1, 1, 1), same),  # too few output channels
      (big, (3, 3, 3, 256, 256), (2, 2, 2), ((0, 1), (0, 1))),  # strided downsample
      (big, (1, 1, 1, 256, 256), (1, 1, 1), ((0, 0), (0, 0))),  # pointwise
  ]:
    assert not conv_ops.winograd_applies(x_shape, kernel_shape, stride, padding)
    assert "conv_general_dilated" in primitives(x_shape, kernel_shape, stride, padding)


def _xla_vjp(x, kernel, cotangent, stride, padding):
  return jax.vjp(_conv("xla", stride, padding), x, kernel)[1](cotangent)


def test_conv_kernel_grad_in_blocks_equals_xla_autodiff(monkeypatch):
  """`conv_ops.conv_kernel_grad` (im2col products, built block by block) equals autodiff of the
  XLA conv within 1e-5 for kt in {1, 3} x every stride x spatial padding, computed in one
  block, in row strips of one frame, and in groups of whole frames."""
  x = _normal(8, (1, 14, 6, 6, 2))
  failures = []
  for kt, stride, spatial in itertools.product((1, 3), STRIDES, SPATIAL_PADDINGS):
    kernel_shape = (kt, 3, 3, 2, 3)
    padding = SPATIAL_PADDINGS[spatial]
    out_shape = (
        1,
        (14 - kt) // stride[0] + 1,
        _spatial_shape(spatial, 6, stride[1]),
        _spatial_shape(spatial, 6, stride[2]),
        3,
    )
    cotangent = _normal(9, out_shape, scale=0.1)
    reference = _xla_vjp(x, _normal(kt, kernel_shape), cotangent, stride, padding)[1]
    frame_bytes = out_shape[2] * out_shape[3] * kt * 9 * 2 * 4  # im2col of one output frame
    for block_bytes in (2**30, 1, 3 * frame_bytes):  # one block, row strips, 1-3 frames
      monkeypatch.setattr(conv_ops, "KERNEL_GRAD_BLOCK_BYTES", block_bytes)
      grad = jax.jit(conv_ops.conv_kernel_grad, static_argnums=(2, 3, 4))(
          x, cotangent, kernel_shape, stride, padding
      )
      if (err := _max_err(grad, reference)) > TOL:
        failures.append(f"kt={kt} stride={stride} {spatial} block={block_bytes}: {err:.2e}")
  assert not failures, "\n".join(failures)


@pytest.fixture
def winograd_everywhere(monkeypatch):
  """The "winograd" implementation runs Winograd convs on these tests' tiny shapes."""
  monkeypatch.setattr(conv_ops, "WINOGRAD_MIN_IN_CHANNELS", 1)
  monkeypatch.setattr(conv_ops, "WINOGRAD_MIN_OUT_CHANNELS", 1)
  monkeypatch.setattr(conv_ops, "WINOGRAD_MIN_TILES", 1)


SAME = ((1, 1), (1, 1))


def _winograd_conv(impl):
  return _conv(impl, (1, 1, 1), SAME)


def _assert_winograd_vjp_is_xla_autodiff(x, kernel, cotangent):
  """d/dx and d/dkernel of the "winograd" conv (custom backward) equal XLA autodiff within
  1e-5 of their scale (at least 1)."""
  fast = jax.jit(lambda x, k, g: jax.vjp(_winograd_conv("winograd"), x, k)[1](g))
  reference = _xla_vjp(x, kernel, cotangent, (1, 1, 1), SAME)
  for name, a, b in zip(("dx", "dkernel"), reference, fast(x, kernel, cotangent)):
    scale = max(1.0, float(np.max(np.abs(a))))
    assert _max_err(a, b) <= TOL * scale, (name, _max_err(a, b), scale)
  return reference


def test_conv_input_grad_as_a_winograd_conv_on_large_frames(winograd_everywhere):
  """Stride 1, `same`: d/dx runs as a Winograd conv of the time-padded cotangent with the
  flipped kernel, F(4×4) on 32² frames, and equals autodiff."""
  assert conv_ops.winograd_tile(jnp.float32, (32, 36)) == 4
  _assert_winograd_vjp_is_xla_autodiff(
      _normal(13, (1, 6, 32, 36, 3)),
      _normal(14, (3, 3, 3, 3, 4), scale=0.2),
      _normal(15, (1, 4, 32, 36, 4), scale=0.1),
  )


def test_conv_custom_backward_through_winograd_in_bfloat16_and_second_order(winograd_everywhere):
  """The custom backward of the Winograd formulation (thresholds lowered to these tiny
  shapes): d/dx and d/dkernel equal XLA autodiff within 1e-5 in float32 and within 2% of the
  gradient's scale in bfloat16 (returned in bfloat16); a second-order gradient under jit
  (d/dx of |d/dkernel|²) and a vmap over kernels agree with the XLA conv within 1e-5 of
  their scale."""
  x = _normal(10, (1, 7, 8, 6, 4))
  kernel = _normal(11, (3, 3, 3, 4, 5), scale=0.2)
  cotangent = _normal(12, (1, 5, 8, 6, 5), scale=0.1)
  reference = _assert_winograd_vjp_is_xla_autodiff(x, kernel, cotangent)
  bf16 = jax.jit(lambda x, k, g: jax.vjp(_winograd_conv("winograd"), x, k)[1](g))(
      *(jnp.asarray(a, jnp.bfloat16) for a in (x, kernel, cotangent))
  )
  for name, a, b in zip(("dx", "dkernel"), reference, bf16):
    assert b.dtype == jnp.bfloat16, name
    scale = float(np.max(np.abs(a)))
    assert _max_err(a, np.asarray(b, np.float32)) <= 0.02 * scale, (name, scale)

  def second_order(impl):
    kernel_grad = jax.grad(lambda x, k: jnp.sum(jnp.sin(_winograd_conv(impl)(x, k))), argnums=1)
    return jax.jit(jax.grad(lambda x, k: jnp.sum(kernel_grad(x, k) ** 2)))(x, kernel)

  reference = second_order("xla")  # entries up to ~300: compared relative to that scale
  assert _max_err(reference, second_order("winograd")) <= TOL * float(np.max(np.abs(reference)))

  kernels = np.stack([kernel, 0.5 * kernel])
  batched = lambda impl: jax.vmap(
      jax.grad(lambda k: jnp.sum(jnp.sin(_winograd_conv(impl)(x, k)))), in_axes=0
  )(kernels)
  reference = batched("xla")
  assert _max_err(reference, batched("summed")) <= TOL * float(np.max(np.abs(reference)))


def test_a_target_platform_picks_its_kernels_on_any_host():
  """The deviceless TPU compile traces on a CPU process: inside `target_platform("tpu")` the
  ops pick the TPU's kernels (XLA's 3D conv, jax.nn attention); a forced one still wins."""
  with backend.target_platform("tpu"):
    assert conv_ops.implementation() == "xla"
    assert attention_ops.implementation() == "jax_nn"
    with conv_ops.forced_implementation("summed"):
      assert conv_ops.implementation() == "summed"
  with backend.target_platform("cpu"):
    assert (conv_ops.implementation(), attention_ops.implementation()) == ("winograd", "einsum")
  with pytest.raises(ValueError, match="tpuv9"):
    with backend.target_platform("tpuv9"):
      pass
