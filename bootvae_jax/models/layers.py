"""Primitive layers of the video autoencoders: convolutions, norms, attention.

Every tensor is channels-last video `(B, T, H, W, C)`. One `Conv3d` class covers the three conv
flavours of DESIGN.md ("Tensors and conventions"):

* causal 3D (`time_padding="causal"`): the first frame is replicated `kt - 1` times in front,
  nothing at the back, so output frame t never sees input frames after t;
* centred 3D (`time_padding="centred"`): zero padding `kt // 2` at both ends (CV-VAE decoder);
* 2D per frame: a kernel with `kt == 1` (no time padding at all).

Kernels are `[kt, kh, kw, in, out]`; logical axis names on every parameter let the trainer map
them onto a device mesh (`core/sharding.py`).

Streaming (DESIGN.md "Beyond the papers"): inside `with streaming(states, last=...)` every op
that looks at other frames than its own keeps what the next chunk needs of this one (a causal
conv: its last `kt - st` padded input frames), so a causal model run chunk by chunk equals the
model on the whole clip. `inference/streaming.py` drives it. Inside `sharding.use_mesh`, every
conv output is constrained by its logical axes (`sharding.constrain`): the rules split it, e.g.
along height, and XLA exchanges the conv halos between devices.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import typing
from typing import Any, Iterator, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from bootvae_jax.cli import UserError
from bootvae_jax.core import sharding

TimePadding = Literal["causal", "centred", "replicate_both", "none"]
SpatialPadding = Literal["same", "bottom_right", "valid"]
ConvImpl = Literal["auto", "xla", "stacked", "summed", "im2col", "winograd"]
CONV_IMPLS = typing.get_args(ConvImpl)[1:]  # what conv_impl names (besides "auto")
KernelInit = Literal["torch", "current_frame"]
KERNEL_INITS = ("torch", "current_frame")  # `model.kernel_init`, see `conv_kernel_init`

CONV_KERNEL_AXES = ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")
CHANNEL_AXES = ("conv_out",)


# ----------------------------------------------------------------------------------------------
# Padding rules (written once).


def pad_time(x: jax.Array, front: int, back: int, mode: str) -> jax.Array:
  """Pads axis 1 (time) of `x: (B, T, H, W, C)`.

  `mode="replicate"` repeats the first / last frame (causal convention of CV-VAE and OD-VAE);
  `mode="zeros"` pads with zeros.
  """
  if front == 0 and back == 0:
    return x
  if mode == "replicate":
    parts = [jnp.repeat(x[:, :1], front, axis=1)] if front else []
    parts.append(x)
    if back:
      parts.append(jnp.repeat(x[:, -1:], back, axis=1))
    return jnp.concatenate(parts, axis=1)
  if mode == "zeros":
    return jnp.pad(x, ((0, 0), (front, back), (0, 0), (0, 0), (0, 0)))
  raise ValueError(f"unknown time padding mode {mode!r}")


def time_padding_amounts(kind: TimePadding, kt: int) -> tuple[int, int, str]:
  """(front, back, mode) for a temporal kernel of size `kt`."""
  if kind == "causal":
    return kt - 1, 0, "replicate"
  if kind == "centred":
    return kt // 2, kt // 2, "zeros"
  if kind == "replicate_both":
    return kt // 2, kt // 2, "replicate"
  if kind == "none":
    return 0, 0, "zeros"
  raise ValueError(f"unknown time_padding {kind!r}; use causal, centred, replicate_both or none")


def spatial_padding_amounts(kind: SpatialPadding, kh: int, kw: int):
  """((top, bottom), (left, right)) zero padding for a spatial kernel."""
  if kind == "same":
    return (kh // 2, kh // 2), (kw // 2, kw // 2)
  if kind == "bottom_right":  # the released downsamplers: pad 1 at bottom/right, then stride 2
    return (0, 1), (0, 1)
  if kind == "valid":
    return (0, 0), (0, 0)
  raise ValueError(f"unknown spatial_padding {kind!r}; use same, bottom_right or valid")


# ----------------------------------------------------------------------------------------------
# Streaming state (written once; used by convs, resamplers and ProMAG's cross-level mixing).


class Stream:
  """What one chunk of a video leaves for the next while a model runs chunk by chunk.

  Ops that see other frames than their own `previous()` / `keep()` a small state: what they
  need of the previous chunk. States are matched between chunks by call order, which is the
  same in every chunk, so a module that runs twice per step (ProMAG's lower levels, on branch
  A and on branch B) keeps one state per call.

  Chunks after the first must continue the first one in steps of the frame rule: a later chunk
  of a model (or level) with temporal factor r has a multiple of r frames and starts at a frame
  index ≡ 1 (mod r) (`inference/streaming.py` cuts them so).

  Attributes:
    first: this chunk starts the video (causal front padding; upsamplers drop their leading
      frames).
    last: this chunk ends the video (ops that look ahead pad the end and flush what they held).
    states: the states left for the next chunk, in call order (a pytree of arrays).
  """

  def __init__(self, states: Sequence[Any] | None = None, *, last: bool = False):
    self.first = states is None
    self.last = last
    self._previous = list(states or ())
    self.states: list[Any] = []
    self._waiting = False

  def previous(self) -> Any:
    """The state this op left in the previous chunk (None in the first); `keep` comes next."""
    if self._waiting:
      raise RuntimeError("Stream.previous() called twice without keep() in between")
    self._waiting = True
    if self.first:
      return None
    if len(self.states) >= len(self._previous):
      raise ValueError(
          "this chunk runs more stateful ops than the previous one; stream"
          " states must come from the same model"
      )
    return self._previous[len(self.states)]

  def keep(self, state: Any) -> None:
    """Leaves `state` for this op's call in the next chunk."""
    if not self._waiting:
      raise RuntimeError("Stream.keep() without Stream.previous()")
    self._waiting = False
    self.states.append(state)


_STREAM: contextvars.ContextVar[Stream | None] = contextvars.ContextVar("stream", default=None)


@contextlib.contextmanager
def streaming(states: Sequence[Any] | None = None, *, last: bool = False) -> Iterator[Stream]:
  """Runs the model calls inside on one chunk of a stream (see `Stream`).

  with layers.streaming(states, last=False) as stream:   # states=None: the first chunk
    posterior = model.encode(chunk)
  states = stream.states                                 # for the next chunk
  """
  stream = Stream(states, last=last)
  token = _STREAM.set(stream)
  try:
    yield stream
  finally:
    _STREAM.reset(token)


def active_stream() -> Stream | None:
  """The stream of the chunk being traced, or None for whole-clip calls."""
  return _STREAM.get()


STREAM_REFUSAL = (
    "{what} makes every frame depend on the whole clip, so it cannot run"
    " chunk by chunk exactly; use the official temporal tiling"
    " (bootvae_jax.inference.chunked.tiled_encode / tiled_decode, or"
    " reconstruct --mode=tiled) or cross-faded chunks (--mode=crossfade)"
)


def stream_blocker(model: nnx.Module) -> str | None:
  """Why `model` cannot stream exactly (naming the first offending layer), or None."""
  for path, node in nnx.iter_graph(model):
    where = "/".join(str(p) for p in path)
    if isinstance(node, Norm) and node.kind == "groupnorm_clip":
      return STREAM_REFUSAL.format(what=f"a clip-wide GroupNorm ({where})")
    if isinstance(node, SpatioTemporalAttention):
      return STREAM_REFUSAL.format(what=f"attention over all frames ({where})")
  return None


def looks_ahead(module: nnx.Module) -> bool:
  """Whether some output frame of `module` depends on later input frames (a centred conv, a
  trilinear time upsampler). Streaming such a model holds those frames back until the next
  chunk, and the last chunk must be flagged `last` (it cannot be padded and trimmed)."""
  return any(
      isinstance(node, nnx.Module) and getattr(node, "time_lookahead", 0) > 0
      for _, node in nnx.iter_graph(module)
  )


def align_held(x: jax.Array, like: jax.Array) -> jax.Array:
  """x's frames, delayed to line up with `like`, a same-rate output that holds frames back
  (a residual branch through convs that look ahead). The identity outside a stream."""
  stream = active_stream()
  if stream is None:
    return x
  held = stream.previous()
  x = x if held is None else jnp.concatenate([held, x], axis=1)
  stream.keep(x[:, like.shape[1] :])
  return x[:, : like.shape[1]]


def _stream_time_window(
    stream: Stream, x: jax.Array, front: int, back: int, mode: str, kt: int, st: int
) -> jax.Array:
  """The frames a valid-in-time conv (kernel kt, stride st) runs on in this chunk.

  The first frames to arrive are padded in front as the whole clip is; later ones are
  prefixed with the padded input frames the previous chunk's windows had not finished with.
  Only the last chunk is padded at the back, so a conv that looks ahead holds its last
  outputs until the next chunk brings the frames they need.
  """
  if kt < st:
    raise ValueError(f"streaming needs temporal kernel >= stride, got kt={kt}, st={st}")
  held = stream.previous()
  if held is None:  # no frame has reached this conv yet
    if x.shape[1] == 0:  # (all held back upstream): still none
      stream.keep(None)
      return x
    x = pad_time(x, front, 0, mode)
  else:
    x = jnp.concatenate([held, x], axis=1)
  if stream.last:
    x = pad_time(x, 0, back, mode)
  num_out = max((x.shape[1] - kt) // st + 1, 0)  # 0: all held until the next chunk
  stream.keep(x[:, st * num_out :])
  return x


# ----------------------------------------------------------------------------------------------
# Convolution kernels: formulations of the same valid-in-time 3D convolution.


def resolve_conv_impl(impl: ConvImpl) -> str:
  """`auto` picks "winograd" on CPU, where XLA's native 3D conv is slow, else "xla".

  Measured on a 2-core AVX-512 CPU, one thread, CPU time of the released OD-VAE layout at
  9×64² (benchmarks/jax_vs_torch.py): decode 10.6 s with "stacked", 9.7 s "summed", 7.9 s
  "winograd" (PyTorch 7.9 s); encode 2.4 / 2.4 / 2.3 s (PyTorch 2.3-2.5 s). With F(4×4) tiles
  (stop 23, 2 threads, 17×128²): OD-VAE decode 38.6 → 28.3 s (PyTorch 40.3-51.4 s), ProMAG
  base decode 12.1 → 9.7 s (PyTorch 12.5 s).

  Training: every formulation but "xla" has a custom backward (`conv_kernel_grad`,
  `winograd_kernel_grad`): XLA's own d/dkernel of these convs was 7x slower (3×3×3 64→64 over
  19×128², wall s on the shared 2-core machine, benchmarks/conv_speed.py --parts=grads:
  autodiff 13.7, ours 1.9 then 1.5 after stacking the cotangent (CPU time -25%), PyTorch 1.4;
  128→128 over 19×64²: 12.8 / 1.8, -20% / 1.4). The ProMAG base train step at 17×128²
  (benchmarks/jax_vs_torch.py --repeats=1) went from 359.9 s with XLA's backward (compile
  425 s) to 88.3 s (compile 160 s), quiet machine; PyTorch 81.7 s there: 4.4x → 1.08x (CPU time
  1.05x).
  """
  if impl == "auto":
    return "winograd" if jax.default_backend() == "cpu" else "xla"
  if impl not in CONV_IMPLS:
    raise UserError(f"unknown conv_impl {impl!r}; use auto or one of {CONV_IMPLS}")
  return impl


def conv3d_valid_time(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: tuple[int, int, int],
    spatial_padding: tuple[tuple[int, int], tuple[int, int]],
    impl: str,
) -> jax.Array:
  """3D convolution with no time padding (the caller pads time first).

  Args:
    x: (B, T, H, W, Cin), already padded in time.
    kernel: (kt, kh, kw, Cin, Cout).
    stride: (st, sh, sw).
    spatial_padding: zero padding ((top, bottom), (left, right)).
    impl: "xla" for `lax.conv_general_dilated` with 3 spatial dims; "stacked" for the CPU
      formulation: the `kt` time-shifted views of `x` are stacked on the channel axis and one
      2D conv with a `(kh, kw, kt*Cin, Cout)` kernel runs over all output frames at once;
      "summed": one 2D conv per temporal tap over its time-shifted view, the `kt` results
      added (no stacked copy of the input); "im2col": `im2col_conv`, one matrix product over
      every output position's whole patch; "winograd": `winograd_conv` where
      `winograd_applies` (3×3 stride-1 `same` convs with many channels over large frames),
      "im2col" where `im2col_applies` (small frames), else "summed".

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
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(st, sh, sw),
        padding=((0, 0),) + tuple(spatial_padding),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
  return _fast_conv(x, kernel, tuple(stride), tuple(map(tuple, spatial_padding)), impl)


def formulation(impl: str, x_shape, kernel_shape, stride, spatial_padding) -> str:
  """The formulation conv_impl `impl` ("stacked", "summed", "im2col" or "winograd") runs for
  this conv: "winograd" is Winograd where `winograd_applies`, im2col where `im2col_applies`,
  else "summed"."""
  if impl != "winograd":
    return impl
  if winograd_applies(x_shape, kernel_shape, stride, spatial_padding):
    return "winograd"
  if im2col_applies(x_shape, kernel_shape, stride, spatial_padding):
    return "im2col"
  return "summed"


def conv3d_by_formulation(x, kernel, stride, spatial_padding, impl):
  """`conv3d_valid_time` by the formulation `impl` ("stacked", "summed", "im2col" or
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
# cotangent (per temporal tap here), which ran ~10x slower than PyTorch's oneDNN (3×3×3 64→64
# over 19×128²: 13.7 s vs 1.4 s, benchmarks/conv_speed.py --parts=grads). The backward below
# computes d/dkernel as matrix products over all positions instead (by Winograd's transforms
# where the forward is a Winograd conv); d/dx is a Winograd conv or autodiff of the fast forward
# formulations (`conv_input_grad`).
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
  """d/dx of `conv3d_valid_time` (formulation `impl`) through `cotangent: (B, T_out, H_out,
  W_out, Cout)`, as a (B, T, H, W, Cin) array.

  Where the transposed conv is itself a Winograd conv (stride 1, `same`: the cotangent
  zero-padded in time, correlated with the flipped kernel, Cin and Cout swapped), it runs as
  one: 1.6-1.7x faster than autodiff of the forward (stop 23, 3×3×3 over 19 frames, min of 3
  calls: 128→128 at 128² 1.47 vs 2.38 s, 256→256 at 64² 1.20 vs 1.92, 512→512 at 32² 1.28 vs
  2.22). Elsewhere: autodiff of the forward w.r.t. x alone, where XLA transposes each per-tap
  2D conv on its own; that ran 1.25-1.4x faster than one "summed" conv of the padded cotangent
  (3×3×3 64→64 over 19×128², 128→128 over 19×64²).
  """
  kt, kh, kw, cin, cout = kernel.shape
  padded_shape = cotangent.shape[:1] + (cotangent.shape[1] + 2 * (kt - 1),) + cotangent.shape[2:]
  if (
      impl == "winograd"
      and tuple(stride) == (1, 1, 1)
      and winograd_applies(padded_shape, (kt, kh, kw, cout, cin), stride, spatial_padding)
  ):
    flipped = jnp.swapaxes(kernel[::-1, ::-1, ::-1], 3, 4)
    return winograd_conv(pad_time(cotangent, kt - 1, kt - 1, "zeros"), flipped)
  forward = lambda x: conv3d_by_formulation(x, kernel, stride, spatial_padding, impl)
  return jax.linear_transpose(forward, jax.ShapeDtypeStruct(x_shape, kernel.dtype))(cotangent)[0]


# Bytes of the im2col block one step of `conv_kernel_grad` builds: big enough for a matrix
# product that runs near the CPU's peak, small enough to stay in its L3 cache. At 17×128²
# (ProMAG base, 3×3×3 64→64) 4-16 row strips per frame (3.5-14 MiB) ran within 20% of each
# other on the loaded machine.
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
  """d/dkernel of `conv3d_valid_time` through `cotangent: (B, T_out, H_out, W_out, Cout)`,
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
    cotangent = pad_time(cotangent, kt - 1, kt - 1, "zeros")
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
# backward (3×3×3 512→512 over 5×8², 2 cores, min of 7 calls, s: forward 0.029 vs 0.037,
# d/dkernel 0.029 vs 0.050, d/dx 0.017 vs 0.050; over 3×8²: 0.013 / 0.009 / 0.009 vs 0.020 / 0.033
# / 0.030), and lost on 16×16 (512→512 over 7×16²: 0.18 / 0.32 / 0.17 vs 0.17 / 0.26 / 0.14).
IM2COL_MAX_OUTPUT_POSITIONS = 64  # output positions per frame


def im2col_applies(x_shape, kernel_shape, stride, spatial_padding) -> bool:
  """Whether conv_impl="winograd" runs `im2col_conv` (small frames) for this conv."""
  (top, bottom), (left, right) = spatial_padding
  h_out = (x_shape[2] + top + bottom - kernel_shape[1]) // stride[1] + 1
  w_out = (x_shape[3] + left + right - kernel_shape[2]) // stride[2] + 1
  return h_out * w_out <= IM2COL_MAX_OUTPUT_POSITIONS


def im2col_conv(x, kernel, stride, spatial_padding) -> jax.Array:
  """`conv3d_valid_time` as one matrix product: (positions, kt·kh·kw·Cin) patches times the
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
# for m = 4). On a 2-core AVX-512 CPU (benchmarks/jax_vs_torch.py --breakdown, XLA 0.10)
# F(2×2) beat the "summed" convs by 1.3-1.5x (and PyTorch's oneDNN conv) from 256 input channels
# over >= 2304 output tiles, and lost below 128 channels, below ~320 tiles and for a few output
# channels. F(4×4) rounds ~10x more (its transforms hold 4, 5, 1/6, 1/24): float32 only.
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
# On frames of at least 64×64 F(4×4) pays from 128 input channels (3×3×3 over 19 frames,
# stop 23, min of 3 calls: 128→128 at 128² 1.49-1.75 s vs 2.31-2.59 "summed", PyTorch 1.57;
# at 64² 0.39-0.43 vs 0.57-0.58; at 32² it tied, and at 16² F(4×4) lost to F(2×2)).
WINOGRAD_LARGE_FRAME = 64
WINOGRAD_F4_MIN_FRAME = 32
WINOGRAD_MIN_IN_CHANNELS_LARGE_FRAME = 128


def winograd_applies(x_shape, kernel_shape, stride, spatial_padding) -> bool:
  """Whether conv_impl="winograd" runs `winograd_conv` for this conv (3×3, stride 1 and
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
  """The output tile of `winograd_conv`: 4 in float32 on frames of at least 32×32 (stop 23,
  over 19 frames: 256→256 at 64² 1.0-1.2 s vs 1.4-1.7 s with 2, 512→512 at 32² 1.1 vs 1.4,
  128→128 at 32² 0.14 vs 0.17; at 16² 4 lost, 512→512 0.71 vs 0.58); else 2, which also
  rounds exactly in bfloat16."""
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
# of tile rows of every frame). The released OD-VAE's training step at 17×128² compiled to 25.4
# GB of temporaries with whole transforms (OOM here), 16.3 GB with 64 MiB strips, 14.9 GB with 8
# or 1 MiB (13.4 GB with the im2col kernel gradient). 128→128 over 19×128², 2 cores: 1.38 / 1.33
# / 1.56 / 2.91 s with 4 / 16 / 64 / 1024 MiB strips.
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

  Measured (3×3×3 over 11 frames, 2 cores, min of 4 calls) against `conv_kernel_grad`:
  128→128 at 64² 0.29 vs 0.52 s, 256→256 at 32² 0.26 vs 0.43, 256→128 at 64² 0.54 vs 0.93.
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


def logical(init, axes: tuple[str | None, ...]):
  """`init` whose parameters carry logical axis names: the one way parameters are annotated
  (also for flax layers, as `kernel_init=logical(...)`).

  The names are only metadata here (no eager sharding, so models build without a mesh):
  `core/sharding.py` maps them to mesh axes with the config's rules and places the
  whole state at once.
  """
  return nnx.with_partitioning(init, axes, eager_sharding=False)


def param(init, rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
  """A parameter of `shape` drawn by `init`, annotated with logical axis names (`logical`)."""
  return nnx.Param(logical(init, axes)(rngs.params(), shape))


def _torch_like_kernel_init(fan_in: int):
  """Kaiming-uniform(a=sqrt(5)) as PyTorch convs use: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def current_frame_tap(time_padding: TimePadding, kt: int) -> int:
  """The temporal tap of a `kt`-tap kernel that reads the output's own frame."""
  return kt - 1 - time_padding_amounts(time_padding, kt)[1]


def conv_kernel_init(
    kind: KernelInit,
    in_channels: int,
    kernel_size: tuple[int, int, int],
    time_padding: TimePadding,
    scale: float = 1.0,
):
  """(kernel init, bias init) of a conv with a `(kt, kh, kw, in_channels, out)` kernel.

  * `torch`: PyTorch's default (uniform ±1/sqrt(fan_in), biases too), as the released code.
  * `current_frame`: He-normal 2D kernels (variance 2/(kh·kw·Cin)) in the temporal tap that
    reads the output's own frame, zeros in the other taps and in the biases: at initialisation
    every 3D conv is a 2D conv of its own frame, as if inflated from a random image model.
    Measured on the demo's clips (results/demo_learning.md, stop 19): a plain causal 3D conv
    net with 4x temporal compression scores 16.8 dB after 50 steps this way and 14.7 with
    `torch` (the data mean scores 14.0).

  `scale` multiplies the kernel (`model.output_init_scale` for the decoder's last conv).
  """
  kt, kh, kw = kernel_size
  if kind == "torch":
    init = _torch_like_kernel_init(in_channels * kt * kh * kw)
    return (lambda key, shape, dtype=jnp.float32: scale * init(key, shape, dtype)), init
  if kind != "current_frame":
    raise UserError(f"unknown kernel_init {kind!r}; use one of {KERNEL_INITS}")
  tap = current_frame_tap(time_padding, kt)
  std = scale * math.sqrt(2.0 / (in_channels * kh * kw))

  def kernel_init(key, shape, dtype=jnp.float32):
    frame_kernel = std * jax.random.normal(key, shape[1:], dtype)
    return jnp.zeros(shape, dtype).at[tap].set(frame_kernel)

  return kernel_init, nnx.initializers.zeros


class Conv3d(nnx.Module):
  """A 3D convolution over `(B, T, H, W, C)` with an explicit padding rule.

  `kernel_size[0] == 1` makes it a 2D conv applied to every frame independently.
  """

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_size: tuple[int, int, int] = (3, 3, 3),
      *,
      stride: tuple[int, int, int] = (1, 1, 1),
      time_padding: TimePadding = "causal",
      spatial_padding: SpatialPadding = "same",
      conv_impl: ConvImpl = "auto",
      dtype: jnp.dtype | None = None,
      kernel_init: KernelInit = "torch",
      init_scale: float = 1.0,
      rngs: nnx.Rngs,
  ):
    kt, kh, kw = kernel_size
    self.time_padding = time_padding if kt > 1 else "none"
    init, bias_init = conv_kernel_init(
        kernel_init, in_channels, kernel_size, self.time_padding, init_scale
    )
    self.kernel = param(init, rngs, (kt, kh, kw, in_channels, out_channels), CONV_KERNEL_AXES)
    self.bias = param(bias_init, rngs, (out_channels,), CHANNEL_AXES)
    self.kernel_size = tuple(kernel_size)
    self.stride = tuple(stride)
    self.spatial_padding = spatial_padding
    self.conv_impl = conv_impl
    self.dtype = dtype

  @property
  def time_lookahead(self) -> int:
    """Later input frames each output frame sees (the back padding): 0 for a causal conv."""
    return time_padding_amounts(self.time_padding, self.kernel_size[0])[1]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.apply(x, self.kernel[...], self.bias[...])

  def apply(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """This conv with other weights (e.g. to differentiate a loss w.r.t. the kernel alone)."""
    kt, kh, kw = self.kernel_size
    front, back, mode = time_padding_amounts(self.time_padding, kt)
    stream = active_stream()
    if stream is None or (kt == 1 and self.stride[0] == 1):  # per-frame convs keep no state
      x = pad_time(x, front, back, mode)
    else:
      x = _stream_time_window(stream, x, front, back, mode, kt, self.stride[0])
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    y = conv3d_valid_time(
        x,
        kernel,
        stride=self.stride,
        spatial_padding=spatial_padding_amounts(self.spatial_padding, kh, kw),
        impl=resolve_conv_impl(self.conv_impl),
    )
    return sharding.constrain(y + bias, sharding.VIDEO_AXES)


def pointwise_conv(in_channels: int, out_channels: int, *, rngs: nnx.Rngs, **kw) -> Conv3d:
  """A 1×1×1 conv (shortcuts, quant convs, attention projections)."""
  return Conv3d(in_channels, out_channels, (1, 1, 1), rngs=rngs, **kw)


class Dense(nnx.Module):
  """A linear map over the channel axis (CV-VAE's temporal attention projections)."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    init = _torch_like_kernel_init(in_features)
    self.kernel = param(init, rngs, (in_features, out_features), ("conv_in", "conv_out"))
    self.bias = param(init, rngs, (out_features,), CHANNEL_AXES)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(x.dtype)
    return x @ kernel + self.bias[...].astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Normalisation.

NormKind = Literal["groupnorm_clip", "groupnorm_frame", "rmsnorm_frame", "layernorm"]
NORM_KINDS = typing.get_args(NormKind)


def per_frame(kind: NormKind) -> NormKind:
  """The per-frame counterpart of a norm (2D blocks always normalise each frame on its own)."""
  return "groupnorm_frame" if kind == "groupnorm_clip" else kind


class Norm(nnx.Module):
  """GroupNorm / mean-free group RMS norm / LayerNorm over channels-last video.

  * `groupnorm_clip`: statistics over (T, H, W, C/G): the released CV-VAE / OD-VAE 3D blocks.
    Every output frame then depends on every input frame.
  * `groupnorm_frame`: statistics over (H, W, C/G) for each frame: causal.
  * `rmsnorm_frame`: ProMAG's "custom norm": divide by the per-frame group RMS without
    subtracting the mean (reported to remove corner "spot" artifacts when growing to 8x).
  * `layernorm`: over C at every position (CV-VAE temporal attention).

  Statistics are computed in float32 whatever the compute dtype. `norm(x, silu=True)` is
  silu(norm(x)) as one differentiable op (`normalize`).
  """

  def __init__(
      self,
      channels: int,
      kind: NormKind,
      *,
      num_groups: int = 32,
      eps: float = 1e-6,
      rngs: nnx.Rngs,
  ):
    if kind not in NORM_KINDS:
      raise ValueError(f"unknown norm {kind!r}; known: {NORM_KINDS}")
    if kind != "layernorm" and channels % num_groups:
      raise ValueError(
          f"{kind} with {num_groups} groups needs channels divisible by {num_groups}, got"
          f" {channels}; set model.num_groups to a divisor of every level width"
      )
    self.scale = param(nnx.initializers.ones, rngs, (channels,), CHANNEL_AXES)
    self.bias = param(nnx.initializers.zeros, rngs, (channels,), CHANNEL_AXES)
    self.kind = kind
    self.num_groups = num_groups
    self.eps = eps

  def __call__(self, x: jax.Array, *, silu: bool = False) -> jax.Array:
    if self.kind == "groupnorm_clip" and active_stream() is not None:
      raise ValueError(STREAM_REFUSAL.format(what="a clip-wide GroupNorm"))
    return normalize(x, self.scale[...], self.bias[...], self.kind, self.num_groups, self.eps, silu)


def _group_mean_fn(kind: NormKind, num_groups: int, shape: tuple[int, ...]):
  """v ↦ the mean of v over the statistics set of `kind` (pooled axes and the channels of a
  group), kept broadcastable against v."""
  if kind == "layernorm":
    return lambda v: v.mean(-1, keepdims=True)
  c = shape[-1]
  size = c // num_groups
  # Axes to pool: (T, H, W) for clip statistics, (H, W) per frame, then the C/G channels of a
  # group. Positions are summed first with the channels kept contiguous: on CPU that reduction
  # runs ~2x faster than one over (T, H, W, C/G) of the grouped array.
  axes = (1, 2, 3) if kind == "groupnorm_clip" else (2, 3)
  count = math.prod(shape[a] for a in axes) * size

  def group_mean(v):
    s = v.sum(axes, keepdims=True)
    s = s.reshape(s.shape[:-1] + (num_groups, size)).sum(-1, keepdims=True) / count
    return jnp.broadcast_to(s, s.shape[:-1] + (size,)).reshape(s.shape[:-2] + (c,))

  return group_mean


def _normalize_forward(x, scale, bias, kind, num_groups, eps, silu):
  """(output, (mean or None, 1/std)): float32 statistics, the output in x's dtype."""
  group_mean = _group_mean_fn(kind, num_groups, x.shape)
  x32 = x.astype(jnp.float32)
  mean = None if kind == "rmsnorm_frame" else group_mean(x32)
  centred = x32 if mean is None else x32 - mean
  rstd = jax.lax.rsqrt(group_mean(jnp.square(centred)) + eps)  # biased, as torch.nn.GroupNorm
  z = centred * rstd * scale + bias
  return (jax.nn.silu(z) if silu else z).astype(x.dtype), (mean, rstd)


# Autodiff of the norm and silu keeps six activation-sized arrays per call for the backward
# (x - mean, the normalised and affine copies, silu's intermediates). This backward keeps x and
# the per-group statistics only and recomputes the rest (elementwise, cheap next to the convs):
# the released OD-VAE train step at 17×128² (benchmarks/jax_vs_torch.py) compiles to 13.4 GB of
# temporaries instead of 18.3 GB and now runs on this 24 GB machine (it was OOM-killed); its
# speed at 9×64² did not change beyond the noise (27.1 s, 3 calls; 27.5 s before).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def normalize(x, scale, bias, kind: NormKind, num_groups: int, eps: float, silu: bool):
  """`kind` norm of x with a per-channel affine (scale, bias), then silu when `silu`."""
  return _normalize_forward(x, scale, bias, kind, num_groups, eps, silu)[0]


def _normalize_fwd(x, scale, bias, kind, num_groups, eps, silu):
  out, (mean, rstd) = _normalize_forward(x, scale, bias, kind, num_groups, eps, silu)
  return out, (x, scale, bias, mean, rstd)


def _normalize_bwd(kind, num_groups, eps, silu, residuals, cotangent):
  # The barrier keeps XLA from merging the recomputation below with the forward's (which
  # would keep the forward's intermediates alive until here again).
  x, scale, bias, mean, rstd = jax.lax.optimization_barrier(residuals)
  group_mean = _group_mean_fn(kind, num_groups, x.shape)
  x32 = x.astype(jnp.float32)
  y = (x32 if mean is None else x32 - mean) * rstd
  dz = cotangent.astype(jnp.float32)
  if silu:
    z = y * scale + bias
    s = jax.nn.sigmoid(z)
    dz = dz * s * (1 + z * (1 - s))
  pooled = tuple(range(x.ndim - 1))
  dscale = (dz * y).sum(pooled)
  dbias = dz.sum(pooled)
  dy = dz * scale
  # d/dx of (x - mean) / std over each statistics set; the mean-free RMS norm drops mean(dy).
  dx = dy - y * group_mean(dy * y)
  if mean is not None:
    dx = dx - group_mean(dy)
  return (dx * rstd).astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


# ----------------------------------------------------------------------------------------------
# Attention.


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Single-head softmax(q kᵀ / sqrt(C)) v over axis -2. q, k, v: (..., N, C)."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("...qc,...kc->...qk", q, k, preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("...qk,...kc->...qc", weights, v)


class SpatialAttention(nnx.Module):
  """Self-attention among the H·W positions of each frame (no attention across frames).

  With `residual=False` it returns only `proj_out(attention)`: CV-VAE's spatio-temporal block
  reuses this path inside its own single residual.
  """

  def __init__(
      self,
      channels: int,
      *,
      norm: NormKind,
      num_groups: int,
      eps: float,
      residual: bool = True,
      rngs: nnx.Rngs,
      **conv_kw,
  ):
    self.norm = Norm(channels, norm, num_groups=num_groups, eps=eps, rngs=rngs)
    self.q = pointwise_conv(channels, channels, rngs=rngs, **conv_kw)
    self.k = pointwise_conv(channels, channels, rngs=rngs, **conv_kw)
    self.v = pointwise_conv(channels, channels, rngs=rngs, **conv_kw)
    self.proj_out = pointwise_conv(channels, channels, rngs=rngs, **conv_kw)
    self.residual = residual

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    hn = self.norm(x)
    q, k, v = (m(hn).reshape(b, t, h * w, c) for m in (self.q, self.k, self.v))
    a = dot_product_attention(q, k, v).reshape(b, t, h, w, c)
    out = self.proj_out(a)
    return x + out if self.residual else out


class SpatioTemporalAttention(nnx.Module):
  """CV-VAE's decoder mid attention: per-frame spatial attention, then attention over time.

  out = x + proj_out_t(attn_t(norm_t(spatial(x)))), one residual around the whole chain; the
  temporal attention sees all T frames of a pixel (not causal).
  """

  def __init__(
      self, channels: int, *, norm: NormKind, num_groups: int, eps: float, rngs: nnx.Rngs, **conv_kw
  ):
    self.spatial = SpatialAttention(
        channels, norm=norm, num_groups=num_groups, eps=eps, residual=False, rngs=rngs, **conv_kw
    )
    self.norm_t = Norm(channels, "layernorm", eps=1e-5, rngs=rngs)
    self.q_t = Dense(channels, channels, rngs=rngs)
    self.k_t = Dense(channels, channels, rngs=rngs)
    self.v_t = Dense(channels, channels, rngs=rngs)
    self.proj_out_t = Dense(channels, channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if active_stream() is not None:
      raise ValueError(STREAM_REFUSAL.format(what="attention over all frames"))
    s = self.spatial(x)
    u = self.norm_t(jnp.moveaxis(s, 1, 3))  # (B, H, W, T, C): one sequence over time per pixel
    a = dot_product_attention(self.q_t(u), self.k_t(u), self.v_t(u))
    return x + jnp.moveaxis(self.proj_out_t(a), 3, 1)


# ----------------------------------------------------------------------------------------------
# Resampling helpers.


def nearest_upsample_space(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x in H and W: out[y, x] = in[y // 2, x // 2]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


def linear_upsample_2x(x: jax.Array, axis: int) -> jax.Array:
  """2x linear upsampling along `axis`, exactly PyTorch's `align_corners=False` with edge clamp.

  out[2i] = 0.25·in[i-1] + 0.75·in[i],  out[2i+1] = 0.75·in[i] + 0.25·in[i+1]  (indices clamped).
  """
  n = x.shape[axis]
  prev = jnp.take(x, jnp.maximum(jnp.arange(n) - 1, 0), axis=axis)
  nxt = jnp.take(x, jnp.minimum(jnp.arange(n) + 1, n - 1), axis=axis)
  even = 0.25 * prev + 0.75 * x
  odd = 0.75 * x + 0.25 * nxt
  out = jnp.stack([even, odd], axis=axis + 1)
  return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1 :])


def depth_to_time(x: jax.Array, factor: int) -> jax.Array:
  """(B, T, H, W, f·C) → (B, f·T, H, W, C), channel group s of frame t becoming frame f·t + s."""
  b, t, h, w, fc = x.shape
  c = fc // factor
  x = x.reshape(b, t, h, w, factor, c)
  return jnp.moveaxis(x, 4, 2).reshape(b, t * factor, h, w, c)


def space_to_depth(x: jax.Array, factor: int) -> jax.Array:
  """(B, T, f·H, f·W, C) → (B, T, H, W, f²·C), channels ordered (fy, fx, C): the inverse of
  `depth_to_space` (a patchified input, as the Cosmos / WF-VAE / LTX-Video tokenizers use)."""
  b, t, fh, fw, c = x.shape
  h, w = fh // factor, fw // factor
  x = x.reshape(b, t, h, factor, w, factor, c)
  x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
  return x.reshape(b, t, h, w, factor * factor * c)


def depth_to_space(x: jax.Array, factor: int) -> jax.Array:
  """(B, T, H, W, f²·C) → (B, T, f·H, f·W, C), channels ordered (fy, fx, C)."""
  b, t, h, w, ffc = x.shape
  c = ffc // (factor * factor)
  x = x.reshape(b, t, h, w, factor, factor, c)
  x = jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6))
  return x.reshape(b, t, h * factor, w * factor, c)
