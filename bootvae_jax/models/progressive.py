"""ProMAG: grow a trained causal tokenizer to 8x / 16x temporal compression (arXiv 2501.05442).

A grown model is a base `model` config with `model.growth.levels > 0` (the fields:
`autoencoder.default_model_config`; build it with `build_model`):
`growth.levels` extra 2x temporal levels on top of the base (4x → 8x → 16x), each built as in
the paper's method figure (our reading):

  encoder level n, input x: (B, 1+r·k·2, H, W, 3), r = the lower level's temporal factor
    branch A  a = lower.body(x[:, ::2])                       (B, 1+k,  H/8, W/8, C)
    branch B  b = lower.body(x)                               (B, 1+2k, H/8, W/8, C)
              b = AdaNorm(b | a)          (mixing adanorm/both; identity at initialisation)
              h = downsample_t(ResBlock(b))                   (B, 1+k,  H/8, W/8, C)
              h = h + a                   (mixing add/both)
    head      moments = conv_out(SiLU(norm_out(h)))           (B, 1+k,  H/8, W/8, 2·z), 1×1×1
  decoder level n, latent z: (B, 1+k, H/8, W/8, z)
              h = conv_in(z)                                  1×1×1, z → C
              h = upsample_t(ResBlock(h))                     (B, 1+2k, H/8, W/8, C)
              video = lower.body(h)                           (B, 1+r·2k, H, W, 3)

`lower` is the stage-I `Encoder` / `Decoder` for the first growth level and the previous
grown level for the next one (recursion), always without its head: the encoder's
norm_out/conv_out, the base's quant convs and the decoder's conv_in are not reused (with
`growth.init='from_lower'`, not the paper's, the head is copied into the new level's and the
new resamplers start as frame selection / repetition: `GrownEncoder`). C is the
base's deepest width (`base_channels · channel_multipliers[-1]`).

Mixing modes (`growth.mixing`): `none` (plain stacking: no branch A; the direct baselines),
`add`, `adanorm`, `both` (default, as in the paper).

AdaNorm (the paper gives no formula; our reading): branch A's features, mean-pooled over
space per frame and RMS-normalised over channels, p_i = rms(mean_hw(a_i)), give a per-channel
scale s_i = 1 + p_i·W + c (and with `growth.adanorm='scale_shift'` a shift t_i = p_i·V + d),
W, c, V, d zero-initialised so that AdaNorm starts as the identity. Branch-B frame j uses
branch-A frame ⌊j/2⌋: with 1+2k branch-B frames that frame depends on input frames ≤ 4j in
an 8x model, exactly the frames branch-B frame j itself sees, so the grown model stays causal.

Parameter layout (every stage's checkpoint maps onto the next stage with one regex):

  stage I  (4x)  encoder/{conv_in,down,mid,norm_out,conv_out}, quant_conv, post_quant_conv,
                 decoder/{conv_in,mid,up,norm_out,conv_out}
  stage II (8x)  encoder/lower/{conv_in,down,mid}, encoder/{adanorm,block,downsample},
                 encoder/{norm_out,conv_out}, decoder/{conv_in,block,upsample},
                 decoder/lower/{mid,up,norm_out,conv_out}
  stage III(16x) encoder/lower/lower/..., encoder/lower/{adanorm,block,downsample}, ... ,
                 decoder/lower/{block,upsample}, decoder/lower/lower/...

`STAGE_MAPPING` rewrites `encoder/lower/X` to the previous stage's `encoder/X` (likewise for
the decoder), `STAGE_EXCLUDE` names the previous stage's head parameters that are dropped on
purpose, and `LOWER_LEVEL` (for `config.freeze`) selects the whole previous stage; the stage
configs that use them are `training/stages.py`'s (`next_stage`, `direct_baseline`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from bootvae_jax.models import autoencoder
from bootvae_jax.models import blocks
from bootvae_jax.models import layers
from bootvae_jax.models import remat as remat_lib
from bootvae_jax.models import streaming

# `config.freeze` entry selecting everything the previous stage trained.
LOWER_LEVEL = r"(encoder|decoder)/lower/.*"
# `config.init_checkpoint.mapping`: a target path `encoder/lower/X` comes from source `encoder/X`.
STAGE_MAPPING = ((r"(encoder|decoder)/lower/(.*)", r"\1/\2"),)
# `config.init_checkpoint.exclude`: the previous stage's head and latent convs, not reused by
# the grown model (the paper) ...
STAGE_EXCLUDE = (r"encoder/(norm_out|conv_out)/.*", r"decoder/conv_in/.*", r"(post_)?quant_conv/.*")
# ... unless `growth.init='from_lower'`, which copies them into the new level's (same path).
HEAD_MAPPING = (
    (r"encoder/((norm_out|conv_out)/.*)", r"encoder/\1"),
    (r"decoder/(conv_in/.*)", r"decoder/\1"),
    (r"((post_)?quant_conv/.*)", r"\1"),
)


def build_model(
    model_config: ml_collections.ConfigDict, *, rngs: nnx.Rngs | None = None, seed: int = 0
) -> autoencoder.VideoAutoencoder:
  """The one model builder: what a `model` config describes, randomly initialised.

  A `VideoAutoencoder`, or a `GrownAutoencoder` when `model.growth.levels > 0`. The config is
  validated first (`autoencoder.validate_model_config`). For the structure alone (no random
  numbers drawn, e.g. before loading weights) wrap the call: `nnx.eval_shape(lambda:
  build_model(config))`.

  Args:
    model_config: a `model` config (`config.model` of a training config).
    rngs: parameter rngs; default `autoencoder.init_rngs(seed)` (a fast `rbg` key).
    seed: the seed of the default rngs.
  """
  rngs = autoencoder.init_rngs(seed) if rngs is None else rngs
  if autoencoder.growth_levels(model_config):
    return GrownAutoencoder(model_config, rngs=rngs)
  return autoencoder.VideoAutoencoder(model_config, rngs=rngs)


# ----------------------------------------------------------------------------------------------
# Cross-level mixing.


class AdaNorm(nnx.Module):
  """Branch B modulated per channel by branch A's pooled features; the identity at init.

  p_i = m_i / rms_c(m_i), m_i = mean over (H, W) of a_i; s_i = 1 + p_i·W + c;
  out_j = s_⌊j/2⌋ ⊙ b_j (+ p_⌊j/2⌋·V + d with mode `scale_shift`).
  """

  def __init__(self, channels: int, mode: str = "scale", *, eps: float = 1e-6, rngs: nnx.Rngs):
    if mode not in autoencoder.ADANORM_MODES:
      raise ValueError(f"unknown AdaNorm mode {mode!r}; use one of {autoencoder.ADANORM_MODES}")
    zeros = nnx.initializers.zeros
    axes = ("conv_in", "conv_out")
    self.scale_kernel = layers.param(zeros, rngs, (channels, channels), axes)
    self.scale_bias = layers.param(zeros, rngs, (channels,), layers.CHANNEL_AXES)
    if mode == "scale_shift":
      self.shift_kernel = layers.param(zeros, rngs, (channels, channels), axes)
      self.shift_bias = layers.param(zeros, rngs, (channels,), layers.CHANNEL_AXES)
    else:
      self.shift_kernel = self.shift_bias = None
    self.eps = eps

  def __call__(self, b: jax.Array, a: jax.Array) -> jax.Array:
    """b: (B, 1+2k, h, w, C) branch B; a: (B, 1+k, h', w', C) branch A → b's shape."""
    pooled = a.astype(jnp.float32).mean(axis=(2, 3))  # (B, 1+k, C)
    # Unit-RMS conditioning keeps the zero-initialised map's early steps small whatever the
    # scale of the frozen features.
    pooled = pooled * jax.lax.rsqrt(jnp.square(pooled).mean(-1, keepdims=True) + self.eps)
    # Branch-B frame j ← branch-A frame j // 2. Streaming, a later chunk's branch-B frames
    # start at an odd index 2m+1, whose branch-A frame m closed the previous chunk: keep it.
    index = jnp.arange(b.shape[1]) // 2
    stream = streaming.active_stream()
    if stream is not None:
      held = stream.previous()
      stream.keep(pooled[:, -1:])
      if held is not None:
        pooled = jnp.concatenate([held, pooled], axis=1)
        index = (jnp.arange(b.shape[1]) + 1) // 2
    pooled = pooled[:, index]
    scale = 1.0 + pooled @ self.scale_kernel[...] + self.scale_bias[...]
    out = b * scale[:, :, None, None, :].astype(b.dtype)
    if self.shift_kernel is not None:
      shift = pooled @ self.shift_kernel[...] + self.shift_bias[...]
      out = out + shift[:, :, None, None, :].astype(b.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# Grown encoder and decoder.


def _drop_head(module: nnx.Module, *names: str) -> nnx.Module:
  """`module` with the layers a grown level does not reuse removed (no parameters left)."""
  for name in names:
    setattr(module, name, None)
  return module


def _even_frames(x: jax.Array) -> jax.Array:
  """Frames 0, 2, 4, ... of the video (branch A). Streaming, a chunk after the first starts at
  an odd frame index (1 + r·k), so its even frames are its odd positions."""
  stream = streaming.active_stream()
  return x[:, ::2] if stream is None or stream.first else x[:, 1::2]


def _start_as_frame_copy(conv: layers.Conv3d, copies: int) -> None:
  """Sets `conv` to copy its input's own frame (the current temporal tap, spatial centre) into
  each of `copies` output-channel groups, biases 0; `copies=0` zeroes it. A strided conv then
  starts as frame selection, a depth-to-time conv as frame repetition."""
  kernel = jnp.zeros_like(conv.kernel[...])
  if copies:
    kt, kh, kw, cin, cout = kernel.shape
    tap = layers.current_frame_tap(conv.time_padding, kt)
    kernel = kernel.at[tap, kh // 2, kw // 2].set(
        jnp.tile(jnp.eye(cin, dtype=kernel.dtype), copies)
    )
  conv.kernel[...] = kernel
  conv.bias[...] = jnp.zeros_like(conv.bias[...])


def starts_from_lower(model_config: ml_collections.ConfigDict) -> bool:
  """Whether a model config's growth levels start `from_lower` (`model.growth.init`)."""
  growth = model_config.get("growth")
  return growth is not None and growth.get("init", "fresh") == "from_lower"


def _head_conv(config, side: str, *, rngs: nnx.Rngs) -> layers.Conv3d:
  """The new level's latent-side conv (`side`: the encoder's conv_out or the decoder's
  conv_in): 1×1×1 to / from the latent (the paper), or with `growth.init='from_lower'` shaped
  as the base's, whose parameters it receives (the quant convs then stay in use, as in the
  base)."""
  conv, _, _ = autoencoder.layer_settings(config, side)
  width = config.base_channels * config.channel_multipliers[-1]
  if not starts_from_lower(config):
    kernel, latent = (1, 1, 1), config.latent_channels
    moments = 2 * latent
  else:
    kernel = autoencoder.conv_kernel_size(
        config[side].get("conv_out" if side == "encoder" else "conv_in", "3d")
    )
    latent = config.z_channels
    moments = 2 * latent if config.double_z else latent
  if side == "encoder":
    return conv.conv(width, moments, kernel, rngs=rngs)
  return conv.conv(latent, width, kernel, rngs=rngs)


class GrownEncoder(nnx.Module):
  """One growth level on top of `lower` (an `Encoder` or a `GrownEncoder`, head dropped).

  body(x: (B, 1+2rk, H, W, C_in)) → (B, 1+k, H/s, W/s, C); __call__ adds the head giving the
  moments (B, 1+k, H/s, W/s, 2·latent_channels).

  With `growth.init='from_lower'` the level starts near its lower level on every other latent
  frame: the head is the lower level's (copied by `next_stage`'s mapping), the res blocks
  start as identities (with `model.residual_gate`) and the downsample as zero when branch A
  is added (h = a: exactly the lower level on frames 0, 2, 4, …), else as frame selection;
  the decoder's upsample starts as frame repetition (`GrownDecoder`).
  """

  def __init__(self, lower: nnx.Module, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    growth = config.growth
    width = config.base_channels * config.channel_multipliers[-1]
    conv, norm, _ = autoencoder.layer_settings(config, "encoder")
    self.lower = lower
    self.mixing = growth.mixing
    self.adanorm = (
        AdaNorm(width, growth.adanorm, eps=config.norm_eps, rngs=rngs)
        if growth.mixing in ("adanorm", "both")
        else None
    )
    self.block = nnx.List(
        [
            blocks.ResBlock(width, width, "3d", conv=conv, norm=norm, rngs=rngs)
            for _ in range(growth.num_res_blocks)
        ]
    )
    self.downsample = blocks.ConvDownsample(
        width,
        blocks.ResampleSpec.parse("conv3d:t", blocks.DOWNSAMPLE_KINDS, "growth"),
        conv=conv,
        rngs=rngs,
    )
    self.norm_out = norm.make(width, rngs=rngs)
    self.conv_out = _head_conv(config, "encoder", rngs=rngs)
    self.remat = remat_lib.blocks_only_policy(config.remat)
    if starts_from_lower(config):
      _start_as_frame_copy(self.downsample.conv, 0 if self.mixing in ("add", "both") else 1)

  def body(self, x: jax.Array) -> jax.Array:
    """Features of this level before its head: (B, 1+k, H/s, W/s, C)."""
    h = self.lower.body(x)  # branch B: (B, 1+2k, ...)
    a = None if self.mixing == "none" else self.lower.body(_even_frames(x))  # branch A (1+k)
    if self.adanorm is not None:
      h = self.adanorm(h, a)
    for block in self.block:
      h = remat_lib.call(block, h, self.remat, scope="block")
    h = self.downsample(h)
    if self.mixing in ("add", "both"):
      h = h + a
    return h

  def head(self, h: jax.Array) -> jax.Array:
    return self.conv_out(self.norm_out(h, silu=True))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.body(x))


class GrownDecoder(nnx.Module):
  """One growth level under `lower` (a `Decoder` or a `GrownDecoder`, conv_in dropped).

  z: (B, 1+k, h, w, latent_channels) → conv_in (1×1×1) → ResBlock → temporal 2x upsample
  (B, 1+2k, h, w, C) → lower.body → (B, 1+2rk, H, W, C_out).
  """

  def __init__(self, lower: nnx.Module, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    growth = config.growth
    width = config.base_channels * config.channel_multipliers[-1]
    conv, norm, _ = autoencoder.layer_settings(config, "decoder")
    self.conv_in = _head_conv(config, "decoder", rngs=rngs)
    self.block = nnx.List(
        [
            blocks.ResBlock(width, width, "3d", conv=conv, norm=norm, rngs=rngs)
            for _ in range(growth.num_res_blocks)
        ]
    )
    self.upsample = blocks.DepthToSpaceUpsample(
        width,
        blocks.ResampleSpec.parse("d2s:t", blocks.UPSAMPLE_KINDS, "growth"),
        conv=conv,
        rngs=rngs,
    )
    self.lower = lower
    self.remat = remat_lib.blocks_only_policy(config.remat)
    if starts_from_lower(config):  # starts repeating each latent frame
      _start_as_frame_copy(self.upsample.conv, 2)

  @property
  def conv_out(self) -> layers.Conv3d:
    """The last layer (the base decoder's conv_out), for the adaptive GAN weight."""
    return self.lower.conv_out

  def output(self, y: jax.Array) -> jax.Array:
    """`conv_out`'s output → video (the base decoder's depth-to-space of pixel patches)."""
    return self.lower.output(y)

  def _grow(self, h: jax.Array) -> jax.Array:
    for block in self.block:
      h = remat_lib.call(block, h, self.remat, scope="block")
    return self.upsample(h)

  def head_input(self, h: jax.Array) -> jax.Array:
    """h: features after conv_in (B, 1+k, h, w, C) → the input of `conv_out`."""
    return self.lower.head_input(self._grow(h))

  def body(self, h: jax.Array) -> jax.Array:
    """Everything after conv_in: what the next growth level runs as its frozen lower level."""
    return self.lower.body(self._grow(h))

  def __call__(self, z: jax.Array) -> jax.Array:
    return self.body(self.conv_in(z))


class GrownAutoencoder(autoencoder.VideoAutoencoder):
  """A base `VideoAutoencoder` config grown by `model.growth.levels` temporal 2x levels.

  Same interface as `VideoAutoencoder` (encode, decode, decode_with_head_input, __call__,
  check_input, temporal_factor = base · 2^levels, spatial_factor); the latent comes straight
  from the top level's 1×1×1 conv_out, so there are no quant convs (with
  `growth.init='from_lower'`: the base's head and quant convs, as in the base).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if autoencoder.growth_levels(config) < 1:
      raise ValueError("GrownAutoencoder needs model.growth.levels >= 1; use build_model")
    super().__init__(config, rngs=rngs)

  def make_encoder_decoder(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    """The base encoder/decoder, wrapped by one growth level per `model.growth.levels`."""
    encoder, decoder = super().make_encoder_decoder(config, rngs=rngs)
    for _ in range(config.growth.levels):  # each level wraps the previous one, without its head
      encoder = GrownEncoder(_drop_head(encoder, "norm_out", "conv_out"), config, rngs=rngs)
      decoder = GrownDecoder(_drop_head(decoder, "conv_in"), config, rngs=rngs)
    return encoder, decoder

  def make_latent_convs(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    """None: the top level's 1×1×1 conv_out / conv_in already map to and from the latent; with
    `growth.init='from_lower'` the base's quant convs (if any), restored with its head."""
    if starts_from_lower(config):
      return super().make_latent_convs(config, rngs=rngs)
    return None, None
