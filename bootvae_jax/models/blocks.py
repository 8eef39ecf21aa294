"""Residual blocks, down/upsamplers and mid blocks: a small registry of kinds named in configs.

Block kinds (`model.encoder.blocks[i]`, `model.decoder.blocks[i]`):
  * `3d`     — conv1 and conv2 are 3×3×3 (causal or centred in time, per the encoder/decoder).
  * `2d`     — both convs are 3×3 per frame and both norms per frame (OD-VAE's ResnetBlock2D).
  * `half3d` — conv1 3×3×3, conv2 3×3 per frame (CV-VAE's `half_3d` ResnetBlock3D).

Resampler specs are strings `"<kind>:<axes>"` where axes is `s` (2x space), `t` (2x time) or
`st` (both; the per-frame kinds `conv2d` and `nearest2d` take `s` only); an empty string means
no resampler at that level.
  Downsample kinds: `conv3d` (causal strided 3×3×3: CV-VAE Downsample3D, OD-VAE
    Spatial2xTime2x3DDownsample, ProMAG's temporal downsample) and `conv2d` (strided 3×3 per
    frame: OD-VAE Downsample).
  Upsample kinds: `nearest3d` (CV-VAE Upsample3D: nearest 2x space, 3×3×3 conv with replicate
    time padding at both ends, depth-to-time), `nearest2d` (OD-VAE SpatialUpsample2x),
    `trilinear` (OD-VAE Spatial2xTime2x3DUpsample) and `d2s` (MAGVIT-v2 style: causal conv then
    depth-to-space / depth-to-time).

Each kind is one entry of `RES_BLOCKS`, `DOWNSAMPLERS`, `UPSAMPLERS` or `ATTENTIONS`, which
config validation (`models/autoencoder.py`) and the builders read; `interop/torch_model.py`
holds the PyTorch twin of each under the same name. A new kind: its entry and module here, its
twin there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bootvae_jax.cli import UserError
from bootvae_jax.models import layers
from bootvae_jax.models import streaming


@dataclasses.dataclass(frozen=True)
class ResBlockKind:
  """A registered res-block kind: its two conv kernels and whether its norms work per frame."""

  conv1: tuple[int, int, int]
  conv2: tuple[int, int, int]
  per_frame_norms: bool = False


# The one table of res-block kinds: config validation lists it, `ResBlock` builds from it, and
# interop/torch_model.py keeps a twin keyed by the same names.
RES_BLOCKS = {
    "3d": ResBlockKind((3, 3, 3), (3, 3, 3)),
    "2d": ResBlockKind((1, 3, 3), (1, 3, 3), per_frame_norms=True),
    "half3d": ResBlockKind((3, 3, 3), (1, 3, 3)),
}
RES_BLOCK_KINDS = tuple(RES_BLOCKS)

# What a config's `norm` / `attention_norm` may name: every norm but layernorm, which
# normalises channels-last tokens (the temporal attention's) and never a conv feature map.
MODEL_NORM_KINDS = tuple(k for k in layers.NORM_KINDS if k != "layernorm")


@dataclasses.dataclass(frozen=True)
class ResampleSpec:
  """A parsed `"<kind>:<axes>"` string."""

  kind: str
  time_factor: int
  space_factor: int

  @classmethod
  def parse(cls, spec: str, allowed: tuple[str, ...], where: str) -> "ResampleSpec | None":
    """`spec` parsed, or None for ''; `allowed`: the kinds that may stand there
    (`DOWNSAMPLE_KINDS` or `UPSAMPLE_KINDS`), each with the axes `RESAMPLERS` registers."""
    if not spec:
      return None
    kind, _, axes = spec.partition(":")
    if kind not in allowed or axes not in RESAMPLERS[kind].axes:
      known = ", ".join(f"{k}:{a}" for k in allowed for a in RESAMPLERS[k].axes)
      raise UserError(
          f"{where}={spec!r} is not a resampler spec; use '<kind>:<axes>', one of {known}"
          " (or '' for none)"
      )
    return cls(kind, 2 if "t" in axes else 1, 2 if "s" in axes else 1)


@dataclasses.dataclass(frozen=True)
class ConvSettings:
  """What every conv of one encoder or decoder shares (and whether its res blocks are gated)."""

  time_padding: layers.TimePadding = "causal"
  dtype: jnp.dtype | None = None
  kernel_init: layers.KernelInit = "torch"
  residual_gate: bool = False  # `model.residual_gate`, see `ResBlock`

  def conv(self, cin, cout, kernel_size, *, rngs, **kw) -> layers.Conv3d:
    kw.setdefault("time_padding", self.time_padding)
    return layers.Conv3d(
        cin,
        cout,
        kernel_size,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        rngs=rngs,
        **kw,
    )

  def pointwise(self, cin, cout, *, rngs) -> layers.Conv3d:
    return self.conv(cin, cout, (1, 1, 1), rngs=rngs)


@dataclasses.dataclass(frozen=True)
class NormSettings:
  kind: layers.NormKind = "groupnorm_clip"
  num_groups: int = 32
  eps: float = 1e-6

  def make(self, channels, *, rngs, kind: layers.NormKind | None = None) -> layers.Norm:
    return layers.Norm(
        channels, kind or self.kind, num_groups=self.num_groups, eps=self.eps, rngs=rngs
    )


class ResBlock(nnx.Module):
  """h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); out = shortcut(x) + h.

  With `conv.residual_gate` the branch is scaled by a learnt scalar `gate` that starts at 0
  (ReZero, Bachlechner et al. 2020): every block starts as its shortcut, so a deep stack
  starts as the shallow net of its convs and resamplers and learns as fast.
  """

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kind: str,
      *,
      conv: ConvSettings,
      norm: NormSettings,
      rngs: nnx.Rngs,
  ):
    if kind not in RES_BLOCKS:
      raise ValueError(f"unknown res block kind {kind!r}; known: {RES_BLOCK_KINDS}")
    spec = RES_BLOCKS[kind]
    norm_kind = layers.per_frame(norm.kind) if spec.per_frame_norms else norm.kind
    self.norm1 = norm.make(in_channels, kind=norm_kind, rngs=rngs)
    self.conv1 = conv.conv(in_channels, out_channels, spec.conv1, rngs=rngs)
    self.norm2 = norm.make(out_channels, kind=norm_kind, rngs=rngs)
    self.conv2 = conv.conv(out_channels, out_channels, spec.conv2, rngs=rngs)
    if in_channels != out_channels:
      self.nin_shortcut = conv.pointwise(in_channels, out_channels, rngs=rngs)
    else:
      self.nin_shortcut = None
    self.gate = layers.param(nnx.initializers.zeros, rngs, (), ()) if conv.residual_gate else None

  @property
  def time_lookahead(self) -> int:
    return self.conv1.time_lookahead + self.conv2.time_lookahead

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(self.norm1(x, silu=True))
    h = self.conv2(self.norm2(h, silu=True))
    if self.gate is not None:
      h = h * self.gate[...].astype(h.dtype)
    shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
    if self.time_lookahead:  # streaming, h holds back frames that the shortcut must wait for
      shortcut = streaming.align_held(shortcut, h)
    return shortcut + h


class ConvDownsample(nnx.Module):
  """Strided causal conv. Space: pad 1 at bottom/right then stride 2 (the released layout);
  time: replicate the first frame twice in front then stride 2, so `1 + 2k` → `1 + k` frames."""

  def __init__(self, channels: int, spec: ResampleSpec, *, conv: ConvSettings, rngs: nnx.Rngs):
    kt = RESAMPLERS[spec.kind].time_kernel
    if kt == 1 and spec.time_factor != 1:
      raise ValueError("a conv2d downsample works per frame and cannot downsample time")
    self.conv = conv.conv(
        channels,
        channels,
        (kt, 3, 3),
        stride=(spec.time_factor, spec.space_factor, spec.space_factor),
        time_padding="causal",
        spatial_padding="bottom_right" if spec.space_factor == 2 else "same",
        rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


def _drop_leading_frames(y: jax.Array, count: int) -> jax.Array:
  """Drops the `count` frames a depth-to-time upsampler makes in front of the first frame
  (they stand for frames before the video); a stream drops them from the first chunk that
  brings frames here (state: None before, an empty marker after)."""
  stream = streaming.active_stream()
  if stream is None:
    return y[:, count:]
  started = stream.previous() is not None
  if not started and y.shape[1] == 0:
    stream.keep(None)
    return y
  stream.keep(jnp.zeros((0,), y.dtype))
  return y if started else y[:, count:]


def _upsample_time_after_first(x: jax.Array) -> jax.Array:
  """Frame 0 kept, frames 1.. linearly 2x in time (`1 + k` → `1 + 2k` frames).

  Output 2i+1 blends input frames i and i+1 (a look-ahead of one frame). Streaming, each chunk
  holds back the odd output of its last frame (and keeps that frame) until the next chunk
  brings frame i+1; the last chunk clamps at the end as the whole clip does.
  """
  stream = streaming.active_stream()
  if stream is None:
    if x.shape[1] == 1:
      return x
    return jnp.concatenate([x[:, :1], layers.linear_upsample_2x(x[:, 1:], 1)], axis=1)
  held = stream.previous()  # the last upsampled frame of the previous chunk (0 or 1 frames)
  if held is None:  # no frame has reached here yet: frame 0 passes through
    if x.shape[1] == 0:
      stream.keep(None)
      return x
    head, frames = x[:, :1], x[:, 1:]
    held = frames[:, :0]
  else:
    head, frames = x[:, :0], x
  w = jnp.concatenate([held, frames], axis=1)
  stream.keep(w[:, -1:])
  if w.shape[1] == 0:
    return head
  up = layers.linear_upsample_2x(w, 1)
  # The held frame's even output went out with the previous chunk; its odd one goes now.
  up = up[:, held.shape[1] : up.shape[1] if stream.last else up.shape[1] - 1]
  return jnp.concatenate([head, up], axis=1)


class NearestUpsample(nnx.Module):
  """Nearest 2x in space, conv to `f·C` channels, depth-to-time, drop the first `f - 1` frames.

  `nearest3d` is CV-VAE's Upsample3D (3×3×3, first/last frame replicated at both ends of time,
  whatever the decoder's own padding); `nearest2d` is OD-VAE's SpatialUpsample2x (3×3 per frame).
  """

  def __init__(self, channels: int, spec: ResampleSpec, *, conv: ConvSettings, rngs: nnx.Rngs):
    kt = RESAMPLERS[spec.kind].time_kernel
    if kt == 1 and spec.time_factor != 1:
      raise ValueError("a nearest2d upsample works per frame and cannot upsample time")
    self.spec = spec
    self.conv = conv.conv(
        channels, spec.time_factor * channels, (kt, 3, 3), time_padding="replicate_both", rngs=rngs
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.spec.space_factor == 2:
      x = layers.nearest_upsample_space(x)
    f = self.spec.time_factor
    y = layers.depth_to_time(self.conv(x), f)
    return _drop_leading_frames(y, f - 1)


class TrilinearUpsample(nnx.Module):
  """OD-VAE's Spatial2xTime2x3DUpsample: frame 0 bilinearly 2x in space only; frames 1.. are
  trilinearly 2x in time and space (frame 0 never mixes with later frames); then a 3×3×3 conv.
  `1 + k` → `1 + 2k` frames."""

  def __init__(self, channels: int, spec: ResampleSpec, *, conv: ConvSettings, rngs: nnx.Rngs):
    self.spec = spec
    self.conv = conv.conv(channels, channels, (3, 3, 3), rngs=rngs)

  @property
  def time_lookahead(self) -> int:
    """Output frame 2i+1 blends input frames i and i+1."""
    return 1 if self.spec.time_factor == 2 else 0

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.spec.space_factor == 2:
      x = layers.linear_upsample_2x(layers.linear_upsample_2x(x, 2), 3)
    if self.spec.time_factor == 2:
      x = _upsample_time_after_first(x)
    return self.conv(x)


class DepthToSpaceUpsample(nnx.Module):
  """MAGVIT-v2 style: causal 3×3×3 conv to `ft·fs²·C` channels, depth-to-space, depth-to-time,
  then drop the first `ft - 1` frames so `1 + k` latent frames give `1 + ft·k` frames."""

  def __init__(self, channels: int, spec: ResampleSpec, *, conv: ConvSettings, rngs: nnx.Rngs):
    self.spec = spec
    factor = spec.time_factor * spec.space_factor**2
    self.conv = conv.conv(channels, factor * channels, (3, 3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    ft, fs = self.spec.time_factor, self.spec.space_factor
    y = layers.depth_to_time(self.conv(x), ft)
    if fs > 1:
      y = layers.depth_to_space(y, fs)
    return _drop_leading_frames(y, ft - 1)


@dataclasses.dataclass(frozen=True)
class ResamplerKind:
  """A registered resampler kind: its module `(channels, spec, *, conv, rngs)`, the axes
  suffixes it takes, and the time extent of its conv (1: per frame, so no time axis)."""

  module: type[nnx.Module]
  axes: tuple[str, ...]
  time_kernel: int = 3


_EVERY_AXES = ("s", "t", "st")

# The one table of resampler kinds (down- and upsamplers; distinct names): config validation
# lists each kind with its axes, the builder calls its module, and interop/torch_model.py keeps
# a twin keyed by the same names.
DOWNSAMPLERS = {
    "conv3d": ResamplerKind(ConvDownsample, _EVERY_AXES),
    "conv2d": ResamplerKind(ConvDownsample, ("s",), time_kernel=1),
}
UPSAMPLERS = {
    "nearest3d": ResamplerKind(NearestUpsample, _EVERY_AXES),
    "nearest2d": ResamplerKind(NearestUpsample, ("s",), time_kernel=1),
    "trilinear": ResamplerKind(TrilinearUpsample, _EVERY_AXES),
    "d2s": ResamplerKind(DepthToSpaceUpsample, _EVERY_AXES),
}
RESAMPLERS = {**DOWNSAMPLERS, **UPSAMPLERS}
DOWNSAMPLE_KINDS = tuple(DOWNSAMPLERS)
UPSAMPLE_KINDS = tuple(UPSAMPLERS)


def make_downsample(channels, spec: ResampleSpec | None, *, conv, rngs):
  if spec is None:
    return None
  return DOWNSAMPLERS[spec.kind].module(channels, spec, conv=conv, rngs=rngs)


def make_upsample(channels, spec: ResampleSpec | None, *, conv, rngs):
  if spec is None:
    return None
  return UPSAMPLERS[spec.kind].module(channels, spec, conv=conv, rngs=rngs)


# Mid-block attention kinds: `spatial` (per-frame attention), `spatiotemporal` (CV-VAE's
# spatial → temporal chain), `none`; interop/torch_model.py keeps a twin keyed by the same names.
ATTENTIONS = {
    "spatial": layers.SpatialAttention,
    "spatiotemporal": layers.SpatioTemporalAttention,
    "none": None,
}
ATTENTION_KINDS = tuple(ATTENTIONS)


def make_attention(
    kind: str, channels: int, *, norm: NormSettings, conv: ConvSettings, rngs: nnx.Rngs
):
  """`kind`'s module from `ATTENTIONS` (None for `none`)."""
  conv_kw = dict(dtype=conv.dtype, kernel_init=conv.kernel_init)
  if kind not in ATTENTIONS:
    raise ValueError(f"unknown attention kind {kind!r}; known: {ATTENTION_KINDS}")
  module = ATTENTIONS[kind]
  if module is None:
    return None
  return module(
      channels, norm=norm.kind, num_groups=norm.num_groups, eps=norm.eps, rngs=rngs, **conv_kw
  )


class MidBlock(nnx.Module):
  """ResBlock → attention → ResBlock at the lowest resolution."""

  def __init__(
      self,
      channels: int,
      block_kind: str,
      attention: str,
      *,
      conv: ConvSettings,
      norm: NormSettings,
      attention_norm: NormSettings,
      rngs: nnx.Rngs,
  ):
    self.block_1 = ResBlock(channels, channels, block_kind, conv=conv, norm=norm, rngs=rngs)
    self.attn_1 = make_attention(attention, channels, norm=attention_norm, conv=conv, rngs=rngs)
    self.block_2 = ResBlock(channels, channels, block_kind, conv=conv, norm=norm, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.block_1(x)
    if self.attn_1 is not None:
      h = self.attn_1(h)
    return self.block_2(h)
