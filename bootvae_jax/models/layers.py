"""Primitive layers of the video autoencoders: convolutions, norms, attention, resamplers.

Every tensor is channels-last video `(B, T, H, W, C)`. One `Conv3d` class covers the three conv
flavours:

* causal 3D (`time_padding="causal"`): the first frame is replicated `kt - 1` times in front,
  nothing at the back, so output frame t never sees input frames after t;
* centred 3D (`time_padding="centred"`): zero padding `kt // 2` at both ends (CV-VAE decoder);
* 2D per frame: a kernel with `kt == 1` (no time padding at all).

Kernels are `[kt, kh, kw, in, out]`; logical axis names on every parameter let the trainer map
them onto a device mesh (`core/sharding.py`). The arithmetic runs in `bootvae_jax.ops`, which
picks the kernel for the backend; these modules hold parameters and padding rules.

Streaming (`models/streaming.py`): inside `with streaming.streaming(states, last=...)` a conv
keeps what the next chunk needs of this one. Inside `sharding.use_mesh`, every conv output is
constrained by its logical axes (`sharding.constrain`): the rules split it, e.g. along height,
and XLA exchanges the conv halos between devices.
"""

from __future__ import annotations

import functools
import math
import typing
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bootvae_jax.cli import UserError
from bootvae_jax.core import sharding
from bootvae_jax.models import remat
from bootvae_jax.models import streaming
from bootvae_jax.ops import attention as attention_ops
from bootvae_jax.ops import conv as conv_ops
from bootvae_jax.ops import norm as norm_ops

TimePadding = Literal["causal", "centred", "replicate_both", "none"]
SpatialPadding = Literal["same", "bottom_right", "valid"]
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
# Parameters and convolution.


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
    It learns faster than `torch` early on (results/demo_learning.md).

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
    stream = streaming.active_stream()
    if stream is None or (kt == 1 and self.stride[0] == 1):  # per-frame convs keep no state
      x = pad_time(x, front, back, mode)
    else:
      pad = functools.partial(pad_time, mode=mode)
      x = streaming.time_window(
          stream, x, kt=kt, st=self.stride[0], front=front, back=back, pad=pad
      )
    if self.dtype is not None:
      x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    y = conv_ops.conv3d(
        x,
        kernel,
        stride=self.stride,
        spatial_padding=spatial_padding_amounts(self.spatial_padding, kh, kw),
    )
    # Named so that `model.remat="block_convs"` keeps conv outputs and recomputes the rest.
    y = checkpoint_name(y + bias, remat.CONV_OUTPUT)
    return sharding.constrain(y, sharding.VIDEO_AXES)


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
  silu(norm(x)) as one differentiable op (`ops.norm.group_norm`).
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
    if self.stream_refusal and streaming.active_stream() is not None:
      raise ValueError(streaming.STREAM_REFUSAL.format(what=self.stream_refusal))
    return norm_ops.group_norm(
        x,
        self.scale[...],
        self.bias[...],
        kind=self.kind,
        num_groups=self.num_groups,
        eps=self.eps,
        silu=silu,
    )

  @property
  def stream_refusal(self) -> str | None:
    """Why this norm cannot run chunk by chunk (`streaming.stream_blocker`), or None."""
    return "a clip-wide GroupNorm" if self.kind == "groupnorm_clip" else None


# ----------------------------------------------------------------------------------------------
# Attention.


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
    a = attention_ops.attention(q, k, v).reshape(b, t, h, w, c)
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

  # Why it cannot run chunk by chunk (`streaming.stream_blocker`).
  stream_refusal = "attention over all frames"

  def __call__(self, x: jax.Array) -> jax.Array:
    if streaming.active_stream() is not None:
      raise ValueError(streaming.STREAM_REFUSAL.format(what=self.stream_refusal))
    s = self.spatial(x)
    u = self.norm_t(jnp.moveaxis(s, 1, 3))  # (B, H, W, T, C): one sequence over time per pixel
    a = attention_ops.attention(self.q_t(u), self.k_t(u), self.v_t(u))
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
