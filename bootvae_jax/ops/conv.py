"""3D convolution over channels-last video, valid in time, by the fastest kernel per backend.

`conv3d` is the op. On GPU and TPU it is `jax.lax.conv_general_dilated`; on CPU, where XLA's
native 3D conv is slow, it is the "winograd" selection of the formulations below (Winograd
F(m×m, 3×3) for wide 3×3 convs, one im2col product for small frames, one 2D conv per temporal
tap elsewhere), each with a custom backward whose d/dkernel is blocked matrix products
(XLA:CPU's own d/dkernel of these convs runs ~7-10x slower). The implementation is chosen at
trace time for the platform compiled for (`backend`); `forced_implementation` overrides it
for tests and benchmarks. Timings behind every threshold: results/conv_formulations.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bootvae_jax.ops import backend

# "xla": `lax.conv_general_dilated` with 3 spatial dims; "stacked": the `kt` time-shifted views
# of x stacked on the channel axis, one 2D conv with a (kh, kw, kt·Cin, Cout) kernel; "summed":
# one 2D conv per temporal tap, the `kt` results added; "im2col": one matrix product over every
# output position's whole patch; "winograd": Winograd where `winograd_applies`, im2col where
# `im2col_applies`, else "summed" (`formulation`).
IMPLEMENTATIONS = ("xla", "stacked", "summed", "im2col", "winograd")

_CHOICE = backend.Choice("conv3d", IMPLEMENTATIONS, cpu="winograd", accelerator="xla")
# `with forced_implementation(name):` traces `conv3d` as `name` whatever the platform;
# `implementation()` is the one it traces now (`backend.Choice`).
forced_implementation = _CHOICE.forced
implementation = _CHOICE.current


def conv3d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: tuple[int, int, int],
    spatial_padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
  """3D convolution with no time padding (the caller pads time first).

  Args:
    x: (B, T, H, W, Cin), already padded in time.
    kernel: (kt, kh, kw, Cin, Cout).
    stride: (st, sh, sw).
    spatial_padding: zero padding ((top, bottom), (left, right)).

  Returns:
    (B, T_out, H_out, W_out, Cout) with `T_out = (T - kt) // st + 1`.
  """
  kt, kh, kw, cin, cout = kernel.shape
  st, sh, sw = stride
  if x.shape[1] < kt:  # a stream chunk whose frames are all held for the next one
    (top, bottom), (left, right) = spatial_padding
    h_out = (x.shape[2] + top + bottom - kh) // sh + 1
    w_out = (x.shape[3] + left + right - kw) // sw + 1
    return jnp.zeros((x.shape[0], 0, h_out, w_out, cout), x.dtype)
  impl = implementation()
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(st, sh, sw),
        padding=((0, 0),) + tuple(map(tuple, spatial_padding)),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
  return _fast_conv(x, kernel, tuple(stride), tuple(map(tuple, spatial_padding)), impl)


def _pad_time_zeros(x: jax.Array, front: int, back: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (front, back), (0, 0), (0, 0), (0, 0)))


def formulation(impl: str, x_shape, kernel_shape, stride, spatial_padding) -> str:
  """The formulation implementation `impl` ("stacked", "summed", "im2col" or "winograd") runs
  for this conv: "winograd" is Winograd where `winograd_applies`, im2col where `im2col_applies`,
  else "summed"."""
  if impl != "winograd":
    return impl
  if winograd_applies(x_shape, kernel_shape, stride, spatial_padding):
    return "winograd"
  if im2col_applies(x_shape, kernel_shape, stride, spatial_padding):
    return "im2col"
  return "summed"


def conv3d_by_formulation(x, kernel, stride, spatial_padding, impl):
  """`conv3d` by the formulation `impl` ("stacked", "summed", "im2col" or
  "winograd"), without its custom backward (plain autodiff differentiates this one)."""
  kt, kh, kw, cin, cout = kernel.shape
  st, sh, sw = stride
  b, t = x.shape[:2]
  t_out = (t - kt) // st + 1
  span = st * (t_out - 1) + 1
  conv2d = functools.partial(
      jax.lax.conv_general_dilated,
      window_strides=(sh, sw),
      padding=tuple(spatial_padding),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  impl = formulation(impl, x.shape, kernel.shape, stride, spatial_padding)
  if impl == "winograd":
    return winograd_conv(x, kernel, time_stride=st)
  if impl == "im2col":
    return im2col_conv(x, kernel, stride, spatial_padding)
  if impl == "summed":
    # Output frame j = sum over taps i of conv2d(input frame j*st + i, kernel[i]).
    tap = lambda i: conv2d(x[:, i : i + span : st].reshape((b * t_out,) + x.shape[2:]), kernel[i])
    y = tap(0)
    for i in range(1, kt):
      y = y + tap(i)
    return y.reshape((b, t_out) + y.shape[1:])
  # (B, T_out, H, W, kt*Cin): channel block i holds input frame j*st + i for output frame j.
  stacked = jnp.concatenate([x[:, i : i + span : st] for i in range(kt)], axis=-1)
  frames = stacked.reshape((b * t_out,) + stacked.shape[2:])
  kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
  y = conv2d(frames, kernel_2d)
  return y.reshape((b, t_out) + y.shape[1:])


# XLA:CPU differentiates a conv w.r.t. its kernel as a conv whose "kernel" is the whole output
# cotangent (per temporal tap here), which ran ~10x slower than PyTorch's oneDNN. The backward
# below computes d/dkernel as matrix products over all positions instead (by Winograd's
# transforms where the forward is a Winograd conv); d/dx is a Winograd conv or autodiff of the
# fast forward formulations (`conv_input_grad`).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, kernel, stride, spatial_padding, impl):
  return conv3d_by_formulation(x, kernel, stride, spatial_padding, impl)


def _fast_conv_fwd(x, kernel, stride, spatial_padding, impl):
  return conv3d_by_formulation(x, kernel, stride, spatial_padding, impl), (x, kernel)


def _fast_conv_bwd(stride, spatial_padding, impl, residuals, cotangent):
  x, kernel = residuals
  dx = conv_input_grad(cotangent, kernel, x.shape, stride, spatial_padding, impl)
  used = formulation(impl, x.shape, kernel.shape, stride, spatial_padding)
  if used == "winograd":
    dkernel = winograd_kernel_grad(x, cotangent, kernel.shape, time_stride=stride[0])
  else:
    dkernel = conv_kernel_grad(
        x, cotangent, kernel.shape, stride, spatial_padding, whole_patches=used == "im2col"
    )
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def conv_input_grad(cotangent, kernel, x_shape, stride, spatial_padding, impl):
  """d/dx of `conv3d` (formulation `impl`) through `cotangent: (B, T_out, H_out,
  W_out, Cout)`, as a (B, T, H, W, Cin) array.

  Where the transposed conv is itself a Winograd conv (stride 1, `same`: the cotangent
  zero-padded in time, correlated with the flipped kernel, Cin and Cout swapped), it runs as
  one (1.6-1.7x faster than autodiff of the forward). Elsewhere: autodiff of the forward
  w.r.t. x alone, where XLA transposes each per-tap 2D conv on its own (1.25-1.4x faster than
  one "summed" conv of the padded cotangent).
  """
  kt, kh, kw, cin, cout = kernel.shape
  padded_shape = cotangent.shape[:1] + (cotangent.shape[1] + 2 * (kt - 1),) + cotangent.shape[2:]
  if (
      impl == "winograd"
      and tuple(stride) == (1, 1, 1)
      and winograd_applies(padded_shape, (kt, kh, kw, cout, cin), stride, spatial_padding)
  ):
    flipped = jnp.swapaxes(kernel[::-1, ::-1, ::-1], 3, 4)
    return winograd_conv(_pad_time_zeros(cotangent, kt - 1, kt - 1), flipped)
  forward = lambda x: conv3d_by_formulation(x, kernel, stride, spatial_padding, impl)
  return jax.linear_transpose(forward, jax.ShapeDtypeStruct(x_shape, kernel.dtype))(cotangent)[0]


# Bytes of the im2col block one step of `conv_kernel_grad` builds: big enough for a matrix
# product that runs near the CPU's peak, small enough to stay in its L3 cache.
KERNEL_GRAD_BLOCK_BYTES = 8 * 2**20


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, max(min(n, limit), 1) + 1) if n % d == 0)


def _sum_over_blocks(num_blocks: int, block_product) -> jax.Array:
  """block_product(0) + ... + block_product(num_blocks - 1), one block at a time (a loop)."""
  if num_blocks == 1:
    return block_product(0)
  return jax.lax.fori_loop(1, num_blocks, lambda k, acc: acc + block_product(k), block_product(0))


def _patches(x, taps: tuple[int, int, int], stride, out_shape: tuple[int, int, int]) -> jax.Array:
  """(B, T_out, H_out, W_out, kt·kh·kw·C): the patch every output position reads from x (padded
  in space already), `taps` = (kt, kh, kw) in the kernel's order."""
  (st, sh, sw), (t_out, h_out, w_out) = stride, out_shape
  return jnp.concatenate(
      [
          x[
              :,
              i : i + st * (t_out - 1) + 1 : st,
              a : a + sh * (h_out - 1) + 1 : sh,
              c : c + sw * (w_out - 1) + 1 : sw,
          ]
          for i in range(taps[0])
          for a in range(taps[1])
          for c in range(taps[2])
      ],
      axis=-1,
  )


def conv_kernel_grad(x, cotangent, kernel_shape, stride, spatial_padding, whole_patches=False):
  """d/dkernel of `conv3d` through `cotangent: (B, T_out, H_out, W_out, Cout)`,
  in float32 (the caller casts), as large matrix products over all positions (im2col).

  Stride 1 in time: for every input frame, colsᵀ · stacked, with cols (positions, kh·kw·Cin)
  its spatial patches and stacked (positions, kt·Cout) the cotangent of the kt output frames
  that read it (zero outside the clip); each patch is copied once, not kt times, which ran
  1.2-1.3x faster at the ProMAG base's shapes. Strided in time, or `whole_patches` (the im2col
  formulation's small frames, where a patch is cheap to copy kt times and the kt - 1 padded
  cotangent frames would be products with zeros): colsᵀ · cotangent with cols (positions,
  kt·kh·kw·Cin) the whole patch of every output position.

  The blocks (a strip of rows of a few frames, `KERNEL_GRAD_BLOCK_BYTES`) are built and
  multiplied one by one inside a loop, so cols is never whole in memory.
  """
  kt, kh, kw, cin, cout = kernel_shape
  st, sh, _ = stride
  (top, bottom), (left, right) = spatial_padding
  b, t_out, h_out, w_out, _ = cotangent.shape
  x = jnp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right), (0, 0)))
  time_taps_on_input = st > 1 or whole_patches
  patch = (kt if time_taps_on_input else 1) * kh * kw * cin
  stacked_channels = cout if time_taps_on_input else kt * cout
  # Frames the blocks go over: output frames (strided), else every input frame that is read.
  num_frames = t_out if time_taps_on_input else t_out + kt - 1
  if not time_taps_on_input:
    cotangent = _pad_time_zeros(cotangent, kt - 1, kt - 1)
  row_bytes = b * w_out * (patch + stacked_channels) * x.dtype.itemsize  # one row of one frame
  rows = _largest_divisor_at_most(h_out, KERNEL_GRAD_BLOCK_BYTES // row_bytes)
  frames = 1
  if rows == h_out:
    frames = _largest_divisor_at_most(num_frames, KERNEL_GRAD_BLOCK_BYTES // (row_bytes * h_out))
  strips = h_out // rows
  in_frames = st * (frames - 1) + kt if time_taps_on_input else frames
  g_frames = frames if time_taps_on_input else frames + kt - 1
  in_rows = sh * (rows - 1) + kh

  def block_product(block):
    j, r = block // strips, block % strips
    x_block = jax.lax.dynamic_slice(
        x, (0, j * frames * st, r * rows * sh, 0, 0), (b, in_frames, in_rows) + x.shape[3:]
    )
    g_block = jax.lax.dynamic_slice(
        cotangent, (0, j * frames, r * rows, 0, 0), (b, g_frames, rows, w_out, cout)
    )
    time_taps = kt if time_taps_on_input else 1
    cols = _patches(x_block, (time_taps, kh, kw), stride, (frames, rows, w_out))
    if time_taps_on_input:
      stacked = g_block
    else:  # input frame u is read by output frame u - i through tap i
      stacked = jnp.concatenate(
          [g_block[:, kt - 1 - i : kt - 1 - i + frames] for i in range(kt)], axis=-1
      )
    # (channels, patch): the orientation XLA:CPU ran up to 15% faster than (patch, channels).
    return jnp.einsum(
        "pd,pk->dk",
        stacked.reshape(-1, stacked_channels),
        cols.reshape(-1, patch),
        preferred_element_type=jnp.float32,
    )

  total = _sum_over_blocks((num_frames // frames) * strips, block_product)
  if time_taps_on_input:
    return total.T.reshape(kernel_shape)
  return jnp.transpose(total.reshape(kt, cout, kh, kw, cin), (0, 2, 3, 4, 1))


# One matrix product over whole patches beat the per-tap 2D convs on 8×8 frames, forward and
# backward, and lost on 16×16.
IM2COL_MAX_OUTPUT_POSITIONS = 64  # output positions per frame


def im2col_applies(x_shape, kernel_shape, stride, spatial_padding) -> bool:
  """Whether implementation "winograd" runs `im2col_conv` (small frames) for this conv."""
  (top, bottom), (left, right) = spatial_padding
  h_out = (x_shape[2] + top + bottom - kernel_shape[1]) // stride[1] + 1
  w_out = (x_shape[3] + left + right - kernel_shape[2]) // stride[2] + 1
  return h_out * w_out <= IM2COL_MAX_OUTPUT_POSITIONS


def im2col_conv(x, kernel, stride, spatial_padding) -> jax.Array:
  """`conv3d` as one matrix product: (positions, kt·kh·kw·Cin) patches times the
  (kt·kh·kw·Cin, Cout) kernel."""
  kt, kh, kw, _, cout = kernel.shape
  (top, bottom), (left, right) = spatial_padding
  x = jnp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right), (0, 0)))
  out_shape = tuple((n - k) // s + 1 for n, k, s in zip(x.shape[1:4], (kt, kh, kw), stride))
  cols = _patches(x, (kt, kh, kw), stride, out_shape)
  return jnp.einsum("bthwk,kd->bthwd", cols, kernel.reshape(-1, cout))


# Winograd F(m×m, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
# 2016): every m×m output tile of a 3×3 conv is A^T [(G g G^T) ⊙ (B^T d B)] A over its
# (m+2)×(m+2) input tile d, so the conv becomes (m+2)² matrix products over channels with
# 9m²/(m+2)² times fewer multiply-adds than 9 taps (2.25x for m = 2, 4x for m = 4), plus input /
# output transforms that cost memory traffic ((m+2)²/m² times the frame: 4x for m = 2, 2.25x
# for m = 4). F(2×2) beat the "summed" convs from 256 input channels over >= 2304 output tiles,
# and lost below 128 channels, below ~320 tiles and for a few output channels. F(4×4) rounds
# ~10x more (its transforms hold 4, 5, 1/6, 1/24): float32 only.
WINOGRAD_TRANSFORMS = {  # output tile m: (B^T, G, A^T)
    2: (
        ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1)),
    ),
    4: (  # interpolation points 0, ±1, ±2, ∞
        (
            (4, 0, -5, 0, 1, 0),
            (0, -4, -4, 1, 1, 0),
            (0, 4, -4, -1, 1, 0),
            (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0),
            (0, 4, 0, -5, 0, 1),
        ),
        (
            (1 / 4, 0, 0),
            (-1 / 6, -1 / 6, -1 / 6),
            (-1 / 6, 1 / 6, -1 / 6),
            (1 / 24, 1 / 12, 1 / 6),
            (1 / 24, -1 / 12, 1 / 6),
            (0, 0, 1),
        ),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
    ),
}
WINOGRAD_MIN_IN_CHANNELS = 256
WINOGRAD_MIN_OUT_CHANNELS = 64
WINOGRAD_MIN_TILES = 2048  # 2×2 output tiles per temporal tap: B · T_out · ⌈H/2⌉ · ⌈W/2⌉
# On frames of at least 64×64 F(4×4) pays from 128 input channels; at 32² it tied with the
# "summed" convs, and at 16² F(4×4) lost to F(2×2).
WINOGRAD_LARGE_FRAME = 64
WINOGRAD_F4_MIN_FRAME = 32
WINOGRAD_MIN_IN_CHANNELS_LARGE_FRAME = 128


def winograd_applies(x_shape, kernel_shape, stride, spatial_padding) -> bool:
  """Whether implementation "winograd" runs `winograd_conv` for this conv (3×3, stride 1 and
  `same` padding in space, and big enough to pay), rather than the "summed" convs."""
  b, t, h, w, cin = x_shape
  kt, kh, kw, _, cout = kernel_shape
  tiles = b * ((t - kt) // stride[0] + 1) * -(-h // 2) * -(-w // 2)
  large_frame = min(h, w) >= WINOGRAD_LARGE_FRAME
  return (
      (kh, kw) == (3, 3)
      and tuple(stride[1:]) == (1, 1)
      and tuple(map(tuple, spatial_padding)) == ((1, 1), (1, 1))
      and cout >= WINOGRAD_MIN_OUT_CHANNELS
      and (
          (cin >= WINOGRAD_MIN_IN_CHANNELS and tiles >= WINOGRAD_MIN_TILES)
          or (large_frame and cin >= WINOGRAD_MIN_IN_CHANNELS_LARGE_FRAME)
      )
  )


def winograd_tile(dtype, frame_shape: tuple[int, int]) -> int:
  """The output tile of `winograd_conv`: 4 in float32 on frames of at least 32×32 (faster
  there, slower on 16×16); else 2, which also rounds exactly in bfloat16."""
  return 4 if jnp.dtype(dtype) == jnp.float32 and min(frame_shape) >= WINOGRAD_F4_MIN_FRAME else 2


def _linear_combination(arrays, coefficients):
  """sum_i coefficients[i] · arrays[i], zero terms skipped (one fused elementwise op)."""
  terms = [
      c * a if c not in (1, -1) else (a if c == 1 else -a)
      for c, a in zip(coefficients, arrays)
      if c
  ]
  return functools.reduce(jnp.add, terms)


def _winograd_input(x: jax.Array, matrix, axis: int, at: int) -> jax.Array:
  """B^T d along `axis` of x (length m·n + 2): the m + 2 rows of the n overlapping input tiles
  (stride m), stacked at axis `at`."""
  alpha = len(matrix)
  m = alpha - 2
  n = (x.shape[axis] - 2) // m
  views = [jax.lax.slice_in_dim(x, a, a + m * (n - 1) + 1, m, axis) for a in range(alpha)]
  return jnp.stack([_linear_combination(views, row) for row in matrix], axis=at)


def _winograd_output(products: jax.Array, matrix) -> jax.Array:
  """A^T M A: (α, α, N, n, w, C) → (N, m·n, m·w, C)."""
  rows = jnp.stack([_linear_combination(products, row) for row in matrix], axis=3)
  out = jnp.stack([_linear_combination(rows, row) for row in matrix], axis=4)
  n, th, m, tw, _, c = out.shape  # (N, n, m, w, m, C)
  return out.reshape(n, th * m, tw * m, c)


def _winograd_output_transpose(cotangent: jax.Array, matrix) -> jax.Array:
  """The transpose of `_winograd_output` (before its reshape): A ȳ A^T of every m×m tile,
  (N, n, m, w, m, C) → (α, α, N, n, w, C)."""
  m, alpha = len(matrix), len(matrix[0])
  column = lambda a: [row[a] for row in matrix]  # column a of A^T
  rows = [
      _linear_combination([cotangent[:, :, r] for r in range(m)], column(a)) for a in range(alpha)
  ]  # each (N, n, w, m, C)
  return jnp.stack(
      [
          jnp.stack(
              [
                  _linear_combination([r[:, :, :, s] for s in range(m)], column(c))
                  for c in range(alpha)
              ]
          )
          for r in rows
      ]
  )


def _winograd_pad(x: jax.Array, tile: int) -> jax.Array:
  """The zero border of 1 around every frame, plus rows / columns up to a multiple of the tile
  (`winograd_conv` crops them at the end)."""
  h, w = x.shape[2:4]
  return jnp.pad(x, ((0, 0), (0, 0), (1, 1 + (-h) % tile), (1, 1 + (-w) % tile), (0, 0)))


def _winograd_input_tiles(x: jax.Array, tile: int) -> jax.Array:
  """B^T d B of every input tile of x padded by `_winograd_pad`: (B, T, m·n + 2, m·w + 2, C) →
  (α, α, B, T, n, w, C)."""
  input_matrix = WINOGRAD_TRANSFORMS[tile][0]
  b, t = x.shape[:2]
  frames = x.reshape((b * t,) + x.shape[2:])
  d = _winograd_input(_winograd_input(frames, input_matrix, 1, 0), input_matrix, 3, 1)
  return d.reshape(d.shape[:2] + (b, t) + d.shape[3:])


def winograd_conv(
    x: jax.Array, kernel: jax.Array, *, time_stride: int = 1, tile: int | None = None
) -> jax.Array:
  """A 3×3 `same` stride-1 conv in space, valid with stride `time_stride` in time (any size;
  see `winograd_applies` for where it is fast), by Winograd F(tile×tile, 3×3) (`tile` 2 or 4;
  default `winograd_tile`).

  x: (B, T, H, W, Cin); kernel: (kt, 3, 3, Cin, Cout) → (B, T_out, H, W, Cout). Each input
  frame is transformed once; the `kt` temporal taps are summed over the transformed frames.
  """
  tile = tile or winograd_tile(x.dtype, x.shape[2:4])
  _, kernel_matrix, output_matrix = WINOGRAD_TRANSFORMS[tile]
  b, t, h, w, _ = x.shape
  kt, cout = kernel.shape[0], kernel.shape[-1]
  t_out = (t - kt) // time_stride + 1
  span = time_stride * (t_out - 1) + 1
  d = _winograd_input_tiles(_winograd_pad(x, tile), tile)  # (α, α, B, T, H/m, W/m, Cin)
  g = jnp.asarray(kernel_matrix, kernel.dtype)
  u = jnp.einsum("ai,tijcd,bj->tabcd", g, kernel, g)  # (kt, α, α, Cin, Cout)
  products = None
  for i in range(kt):  # output frame j: input frames j·stride + i
    tap = jnp.einsum("abnthwc,abcd->abnthwd", d[:, :, :, i : i + span : time_stride], u[i])
    products = tap if products is None else products + tap
  products = products.reshape(products.shape[:2] + (b * t_out,) + products.shape[4:])
  y = _winograd_output(products, output_matrix)[:, :h, :w]
  return y.reshape((b, t_out, h, w, cout))


# Bytes of the transformed input and cotangent one step of `winograd_kernel_grad` holds (a strip
# of tile rows of every frame): whole transforms made the OD-VAE train step run out of memory
# on CPU; strips of 4-16 MiB were also the fastest.
WINOGRAD_KERNEL_GRAD_BLOCK_BYTES = 16 * 2**20


def winograd_kernel_grad(
    x: jax.Array,
    cotangent: jax.Array,
    kernel_shape: tuple[int, ...],
    *,
    time_stride: int = 1,
    tile: int | None = None,
) -> jax.Array:
  """d/dkernel of `winograd_conv(x, kernel, time_stride=...)` through `cotangent: (B, T_out, H,
  W, Cout)`, in float32, by the same transforms: the transpose of its output transform takes
  every m×m cotangent tile to α×α (A ȳ A^T), each temporal tap is one product per α×α position
  over all tiles (transformed input ⊗ transformed cotangent, (Cin, Cout)), and G^T · G takes
  that back to 3×3. α²/(9m²) of the im2col products' multiply-adds (1/4 with F(4×4)). Summed
  over strips of tile rows in a loop (`WINOGRAD_KERNEL_GRAD_BLOCK_BYTES`).
  """
  x, cotangent = x.astype(jnp.float32), cotangent.astype(jnp.float32)
  b, t_out, h, w, cout = cotangent.shape
  tile = tile or winograd_tile(jnp.float32, (h, w))
  _, kernel_matrix, output_matrix = WINOGRAD_TRANSFORMS[tile]
  alpha = tile + 2
  span = time_stride * (t_out - 1) + 1
  x = _winograd_pad(x, tile)
  g = jnp.pad(cotangent, ((0, 0), (0, 0), (0, (-h) % tile), (0, (-w) % tile), (0, 0)))
  tiles_h, tiles_w = g.shape[2] // tile, g.shape[3] // tile
  row_bytes = 4 * alpha**2 * b * tiles_w * (x.shape[1] * x.shape[-1] + t_out * cout)
  rows = _largest_divisor_at_most(tiles_h, WINOGRAD_KERNEL_GRAD_BLOCK_BYTES // row_bytes)

  def block_product(block):
    x_strip = jax.lax.dynamic_slice_in_dim(x, block * rows * tile, rows * tile + 2, axis=2)
    d = _winograd_input_tiles(x_strip, tile)  # (α, α, B, T, rows, W/m, Cin)
    # The transposes of the output's crop and of its transform.
    g_strip = jax.lax.dynamic_slice_in_dim(g, block * rows * tile, rows * tile, axis=2)
    g_strip = g_strip.reshape((b * t_out, rows, tile, tiles_w, tile, cout))
    m_bar = _winograd_output_transpose(g_strip, output_matrix)
    m_bar = m_bar.reshape(m_bar.shape[:2] + (b, t_out) + m_bar.shape[3:])
    return jnp.stack(
        [
            jnp.einsum("abnthwc,abnthwd->abcd", d[:, :, :, i : i + span : time_stride], m_bar)
            for i in range(kernel_shape[0])
        ]
    )  # (kt, α, α, Cin, Cout)

  u_bar = _sum_over_blocks(tiles_h // rows, block_product)
  kernel_matrix = jnp.asarray(kernel_matrix, jnp.float32)
  return jnp.einsum("ai,tabcd,bj->tijcd", kernel_matrix, u_bar, kernel_matrix)
