"""Encoder, Decoder, DiagonalGaussian and the config-built `VideoAutoencoder`.

An architecture is a `model` config (every field: `default_model_config`; the shipped ones:
`models/architectures.py`): per-level widths, block kind per level, resampler per level, time
padding, norms, mid attention, latent channels, ProMAG growth levels. The module tree mirrors
the released CV-VAE / OD-VAE layouts (`encoder.down[i].block[j]`, `encoder.mid.block_1`, ...),
which keeps checkpoint conversion a key-mapping table (`interop/official.py`).

The rules every other module asks about live here, once: a config's compression
(`compression_factors`, growth included) and its validation (`validate_model_config`); the
causal frame rule (`frame_rule_error`) and the spatial rule (`frame_size_error`) are
`core/frames.py`'s, re-exported here.
Build models with `bootvae_jax.build_model` (`models/progressive.py`), which also builds grown
models.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from flax import struct

from bootvae_jax.cli import UserError

# The frame rules live on the ground floor (the data pipeline checks clips against them too).
from bootvae_jax.core.frames import check_frames  # pylint: disable=unused-import
from bootvae_jax.core.frames import frame_rule  # pylint: disable=unused-import
from bootvae_jax.core.frames import frame_rule_error  # pylint: disable=unused-import
from bootvae_jax.core.frames import frame_size_error  # pylint: disable=unused-import
from bootvae_jax.core.frames import valid_frame_counts  # pylint: disable=unused-import
from bootvae_jax.models import blocks
from bootvae_jax.models import layers
from bootvae_jax.models import remat as remat_lib
from bootvae_jax.models import streaming

# `model.growth` choices (ProMAG, `models/progressive.py`).
MIXING_MODES = ("none", "add", "adanorm", "both")
ADANORM_MODES = ("scale", "scale_shift")
GROWTH_INITS = ("fresh", "from_lower")

# ----------------------------------------------------------------------------------------------
# Posterior.


@struct.dataclass
class DiagonalGaussian:
  """The KL posterior q(z|x) = N(mean, exp(logvar)); a pytree, so it crosses `jax.jit`.

  mean, logvar: (B, T', H', W', C_latent); logvar is already clamped to [-30, 20].
  """

  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array, clamp=(-30.0, 20.0)) -> "DiagonalGaussian":
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, *clamp))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) summed over every non-batch axis: (B,)."""
    var = jnp.exp(self.logvar)
    return 0.5 * jnp.sum(
        jnp.square(self.mean) + var - 1.0 - self.logvar, axis=tuple(range(1, self.mean.ndim))
    )


# ----------------------------------------------------------------------------------------------
# Architecture description derived from a config (validated before any parameter exists).


def _level_specs(config: ml_collections.ConfigDict, side: str) -> list:
  cfg = config[side]
  num_levels = len(config.channel_multipliers)
  kinds, allowed = (
      ("downsample", blocks.DOWNSAMPLE_KINDS)
      if side == "encoder"
      else ("upsample", blocks.UPSAMPLE_KINDS)
  )
  specs = list(cfg[kinds])
  for name in ("blocks", kinds):
    if len(cfg[name]) != num_levels:
      raise UserError(
          f"model.{side}.{name} has {len(cfg[name])} entries but model.channel_multipliers"
          f" has {num_levels} levels"
      )
  for i, kind in enumerate(cfg.blocks):
    if kind not in blocks.RES_BLOCK_KINDS:
      raise UserError(
          f"model.{side}.blocks[{i}]={kind!r} is not a block kind; known:"
          f" {blocks.RES_BLOCK_KINDS}"
      )
  return [
      blocks.ResampleSpec.parse(s, allowed, f"model.{side}.{kinds}[{i}]")
      for i, s in enumerate(specs)
  ]


def growth_levels(config: ml_collections.ConfigDict) -> int:
  """ProMAG growth levels of a model config (`model.growth.levels`; 0: the base model)."""
  growth = config.get("growth")
  return 0 if growth is None else int(growth.levels)


def compression_factors(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(temporal, spatial) compression of a model config, base or grown.

  The base levels' resamplers give (r, s) (encoder and decoder must agree); each ProMAG growth
  level (`model.growth.levels`, `models/progressive.py`) doubles r, and `model.patch_size` p
  multiplies s by p.
  """
  enc = [s for s in _level_specs(config, "encoder") if s]
  dec = [s for s in _level_specs(config, "decoder") if s]
  factors = {}
  for side, specs in (("encoder", enc), ("decoder", dec)):
    factors[side] = (
        math.prod(s.time_factor for s in specs),
        math.prod(s.space_factor for s in specs),
    )
  if factors["encoder"] != factors["decoder"]:
    raise UserError(
        f"encoder compresses (time, space) by {factors['encoder']} but the decoder expands by"
        f" {factors['decoder']}; make model.encoder.downsample and model.decoder.upsample match"
    )
  temporal, spatial = factors["encoder"]
  return temporal * 2 ** growth_levels(config), spatial * patch_size(config)


def patch_size(config: ml_collections.ConfigDict) -> int:
  """`model.patch_size` p: the encoder sees p×p pixel patches stacked on channels and the
  decoder's last conv emits them (space-to-depth in, depth-to-space out), so no conv runs at
  full resolution. 1 = no patchify (the released layouts)."""
  return int(config.get("patch_size", 1))


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a model config (base or grown) that cannot build, naming the field;
  runs before any parameter is created."""
  compression_factors(config)
  remat_lib.policy(config.get("remat", ""))
  if patch_size(config) < 1:
    raise UserError(f"model.patch_size={config.patch_size!r} must be >= 1 (1: no patchify)")
  for side in ("encoder", "decoder"):
    cfg = config[side]
    if not isinstance(cfg.num_res_blocks, int) or cfg.num_res_blocks < 1:
      # A level's first res block is what changes the width between levels.
      raise UserError(f"model.{side}.num_res_blocks={cfg.num_res_blocks!r} must be an int >= 1")
    if cfg.time_padding not in ("causal", "centred"):
      raise UserError(f"model.{side}.time_padding={cfg.time_padding!r}; use causal or centred")
    if cfg.mid_block not in blocks.RES_BLOCK_KINDS:
      raise UserError(
          f"model.{side}.mid_block={cfg.mid_block!r} is not a block kind; known:"
          f" {blocks.RES_BLOCK_KINDS}"
      )
    for name in ("conv_in", "conv_out"):
      if cfg.get(name, "3d") not in ("3d", "2d"):
        raise UserError(f"model.{side}.{name}={cfg[name]!r}; use '3d' or '2d'")
    if cfg.mid_attention not in blocks.ATTENTION_KINDS:
      raise UserError(
          f"model.{side}.mid_attention={cfg.mid_attention!r}; known:" f" {blocks.ATTENTION_KINDS}"
      )
    for name in ("norm", "attention_norm"):
      if cfg[name] not in blocks.MODEL_NORM_KINDS:
        raise UserError(f"model.{side}.{name}={cfg[name]!r}; use one of {blocks.MODEL_NORM_KINDS}")
  widths = [config.base_channels * m for m in config.channel_multipliers]
  for w in [config.base_channels] + widths:
    if w % config.num_groups:
      raise UserError(
          f"level width {w} is not divisible by model.num_groups=" f"{config.num_groups}"
      )
  if not config.use_quant_conv and config.latent_channels != config.z_channels:
    raise UserError("without quant convs model.latent_channels must equal model.z_channels")
  if config.get("kernel_init", "torch") not in layers.KERNEL_INITS:
    raise UserError(f"model.kernel_init={config.kernel_init!r}; use one of {layers.KERNEL_INITS}")
  if not config.get("output_init_scale", 1.0) >= 0:
    raise UserError(f"model.output_init_scale={config.output_init_scale!r} must be >= 0")
  if not isinstance(config.get("residual_gate", False), bool):
    raise UserError(f"model.residual_gate={config.residual_gate!r} must be True or False")
  if (growth := config.get("growth")) is not None:
    _validate_growth(growth)


def _validate_growth(growth: ml_collections.ConfigDict) -> None:
  if not isinstance(growth.levels, int) or growth.levels < 0:
    raise UserError(f"model.growth.levels={growth.levels!r} must be an int >= 0 (1: 4x → 8x)")
  if growth.mixing not in MIXING_MODES:
    raise UserError(f"model.growth.mixing={growth.mixing!r}; use one of {MIXING_MODES}")
  if growth.adanorm not in ADANORM_MODES:
    raise UserError(f"model.growth.adanorm={growth.adanorm!r}; use one of {ADANORM_MODES}")
  if not isinstance(growth.num_res_blocks, int) or growth.num_res_blocks < 1:
    raise UserError(f"model.growth.num_res_blocks={growth.num_res_blocks!r} must be >= 1")
  if growth.get("init", "fresh") not in GROWTH_INITS:
    raise UserError(f"model.growth.init={growth.init!r}; use one of {GROWTH_INITS}")


def layer_settings(
    config: ml_collections.ConfigDict, side: str
) -> tuple[blocks.ConvSettings, blocks.NormSettings, blocks.NormSettings]:
  """(conv, norm, attention norm) settings every layer of the `side` ('encoder'/'decoder') uses."""
  cfg = config[side]
  dtype = jnp.dtype(config.dtype) if config.dtype != "float32" else None
  conv = blocks.ConvSettings(
      time_padding=cfg.time_padding,
      dtype=dtype,
      kernel_init=config.get("kernel_init", "torch"),
      residual_gate=bool(config.get("residual_gate", False)),
  )
  norm = blocks.NormSettings(cfg.norm, config.num_groups, config.norm_eps)
  attention_norm = blocks.NormSettings(cfg.attention_norm, config.num_groups, config.norm_eps)
  return conv, norm, attention_norm


def conv_kernel_size(kind: str) -> tuple[int, int, int]:
  if kind not in ("3d", "2d"):
    raise ValueError(f"conv kind {kind!r}; use '3d' or '2d'")
  return (3, 3, 3) if kind == "3d" else (1, 3, 3)


class Level(nnx.Module):
  """The res blocks of one resolution level plus its resampler (`down[i]` / `up[i]`)."""

  def __init__(
      self,
      widths_in_out: list[tuple[int, int]],
      kind: str,
      resampler,
      *,
      resampler_attr: str,
      conv,
      norm,
      rngs,
  ):
    self.block = nnx.List(
        [
            blocks.ResBlock(cin, cout, kind, conv=conv, norm=norm, rngs=rngs)
            for cin, cout in widths_in_out
        ]
    )
    setattr(self, resampler_attr, resampler)
    self.resampler_attr = resampler_attr

  def __call__(self, x: jax.Array, remat: str = "") -> jax.Array:
    for block in self.block:
      x = remat_lib.call(block, x, remat, scope="block")
    resampler = getattr(self, self.resampler_attr)
    return x if resampler is None else resampler(x)


class Encoder(nnx.Module):
  """conv_in → levels (res blocks + downsample) → mid → norm_out, SiLU, conv_out (2·z)."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    cfg = config.encoder
    conv, norm, attention_norm = layer_settings(config, "encoder")
    specs = _level_specs(config, "encoder")
    widths = [config.base_channels * m for m in config.channel_multipliers]
    self.patch_size = patch_size(config)
    self.conv_in = conv.conv(
        config.in_channels * self.patch_size**2,
        config.base_channels,
        conv_kernel_size(cfg.conv_in),
        rngs=rngs,
    )
    down, width = [], config.base_channels
    for i, (out, kind, spec) in enumerate(zip(widths, cfg.blocks, specs)):
      pairs = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks)]
      resampler = blocks.make_downsample(out, spec, conv=conv, rngs=rngs)
      down.append(
          Level(
              pairs, kind, resampler, resampler_attr="downsample", conv=conv, norm=norm, rngs=rngs
          )
      )
      width = out
    self.down = nnx.List(down)
    self.mid = blocks.MidBlock(
        width,
        cfg.mid_block,
        cfg.mid_attention,
        conv=conv,
        norm=norm,
        attention_norm=attention_norm,
        rngs=rngs,
    )
    self.norm_out = norm.make(width, rngs=rngs)
    out_channels = 2 * config.z_channels if config.double_z else config.z_channels
    self.conv_out = conv.conv(
        width, out_channels, conv_kernel_size(cfg.get("conv_out", "3d")), rngs=rngs
    )
    self.remat = remat_lib.policy(config.remat)

  def body(self, x: jax.Array) -> jax.Array:
    """Everything up to (excluding) norm_out/conv_out: the features ProMAG grows on."""
    if self.patch_size > 1:
      x = layers.space_to_depth(x, self.patch_size)
    h = self.conv_in(x)
    for level in self.down:
      h = remat_lib.call(level, h, self.remat, scope="level", args=(self.remat,))
    return self.mid(h)

  def head(self, h: jax.Array) -> jax.Array:
    return self.conv_out(self.norm_out(h, silu=True))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.body(x))


class Decoder(nnx.Module):
  """conv_in → mid → levels (res blocks + upsample, lowest resolution first) → conv_out."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    cfg = config.decoder
    conv, norm, attention_norm = layer_settings(config, "decoder")
    specs = _level_specs(config, "decoder")
    widths = [config.base_channels * m for m in config.channel_multipliers]
    width = widths[-1]
    self.conv_in = conv.conv(config.z_channels, width, conv_kernel_size(cfg.conv_in), rngs=rngs)
    self.mid = blocks.MidBlock(
        width,
        cfg.mid_block,
        cfg.mid_attention,
        conv=conv,
        norm=norm,
        attention_norm=attention_norm,
        rngs=rngs,
    )
    up = [None] * len(widths)
    for i in reversed(range(len(widths))):
      out = widths[i]
      pairs = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks)]
      resampler = blocks.make_upsample(out, specs[i], conv=conv, rngs=rngs)
      up[i] = Level(
          pairs,
          cfg.blocks[i],
          resampler,
          resampler_attr="upsample",
          conv=conv,
          norm=norm,
          rngs=rngs,
      )
      width = out
    self.up = nnx.List(up)  # indexed by level like the released models: up[0] runs last
    self.norm_out = norm.make(width, rngs=rngs)
    self.patch_size = patch_size(config)
    self.conv_out = conv.conv(
        width,
        config.out_channels * self.patch_size**2,
        conv_kernel_size(cfg.get("conv_out", "3d")),
        init_scale=config.get("output_init_scale", 1.0),
        rngs=rngs,
    )
    self.remat = remat_lib.policy(config.remat)

  def head_input(self, h: jax.Array) -> jax.Array:
    """mid → levels → norm_out → SiLU: the input of the last layer `conv_out`.

    h: features after `conv_in`, (B, 1+k, H/s, W/s, widths[-1]).
    """
    h = self.mid(h)
    for level in reversed(self.up):
      h = remat_lib.call(level, h, self.remat, scope="level", args=(self.remat,))
    return self.norm_out(h, silu=True)

  def output(self, y: jax.Array) -> jax.Array:
    """`conv_out`'s output → video: depth-to-space of the pixel patches (see `patch_size`)."""
    return y if self.patch_size == 1 else layers.depth_to_space(y, self.patch_size)

  def body(self, h: jax.Array) -> jax.Array:
    """Everything after `conv_in`: what ProMAG's frozen lower-level decoder runs."""
    return self.output(self.conv_out(self.head_input(h)))

  def __call__(self, z: jax.Array) -> jax.Array:
    return self.body(self.conv_in(z))


class VideoAutoencoder(nnx.Module):
  """A causal 3D video VAE built from a `model` config.

  encode(x: (B, 1+r·k, H, W, C_in) in [-1, 1]) -> DiagonalGaussian over (B, 1+k, H/s, W/s, C_z)
  decode(z) -> (B, 1+r·k, H, W, C_out)
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_model_config(config)
    # The exact class: a subclass (GrownAutoencoder) builds the growth itself.
    if growth_levels(config) and self.__class__ is VideoAutoencoder:
      raise ValueError(
          f"model.growth.levels={config.growth.levels} describes a grown ProMAG"
          " model; build it with bootvae_jax.build_model(config.model)"
      )
    self.config = config
    self.temporal_factor, self.spatial_factor = compression_factors(config)
    self.encoder, self.decoder = self.make_encoder_decoder(config, rngs=rngs)
    self.quant_conv, self.post_quant_conv = self.make_latent_convs(config, rngs=rngs)
    self.compute_dtype = jnp.dtype(config.dtype)

  # The seam a grown model (`progressive.GrownAutoencoder`) extends: everything else is shared.

  def make_encoder_decoder(
      self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs
  ) -> tuple[nnx.Module, nnx.Module]:
    """The encoder (body → head giving the moments) and decoder (conv_in → body)."""
    return Encoder(config, rngs=rngs), Decoder(config, rngs=rngs)

  def make_latent_convs(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    """(quant_conv, post_quant_conv): 1×1×1 convs between the encoder head and the latent and
    between the latent and the decoder; (None, None) without `model.use_quant_conv`."""
    if not config.use_quant_conv:
      return None, None
    conv, _, _ = layer_settings(config, "encoder")
    moments = 2 * config.z_channels if config.double_z else config.z_channels
    return (
        conv.pointwise(moments, 2 * config.latent_channels, rngs=rngs),
        conv.pointwise(config.latent_channels, config.z_channels, rngs=rngs),
    )

  @property
  def latent_channels(self) -> int:
    return self.config.latent_channels

  def check_input(self, x: jax.Array) -> None:
    if x.ndim != 5:
      raise ValueError(f"expected video (B, T, H, W, C), got shape {x.shape}")
    stream = streaming.active_stream()
    if stream is None or stream.first:
      check_frames(x.shape[1], self.temporal_factor)
    elif x.shape[1] % self.temporal_factor:
      raise ValueError(
          f"a chunk after the first has {x.shape[1]} frames; a"
          f" {self.temporal_factor}x causal model streams in chunks of a multiple"
          f" of {self.temporal_factor} frames after a first chunk of"
          f" 1+{self.temporal_factor}k"
      )
    if (message := frame_size_error(*x.shape[2:4], self.spatial_factor)) is not None:
      raise ValueError(message)

  def moments(self, x: jax.Array) -> jax.Array:
    self.check_input(x)
    h = self.encoder(x.astype(self.compute_dtype))
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    return h.astype(jnp.float32)

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    return DiagonalGaussian.from_moments(self.moments(x))

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(self.decoder_input(z)).astype(jnp.float32)

  def decoder_input(self, z: jax.Array) -> jax.Array:
    z = z.astype(self.compute_dtype)
    return z if self.post_quant_conv is None else self.post_quant_conv(z)

  def decode_with_head_input(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(reconstruction, input of decoder.conv_out): the adaptive GAN weight differentiates
    losses w.r.t. the last layer's kernel through `decoder.conv_out.apply`."""
    h = self.decoder.head_input(self.decoder.conv_in(self.decoder_input(z)))
    return self.decoder.output(self.decoder.conv_out(h)).astype(jnp.float32), h

  def __call__(
      self, x: jax.Array, rng: jax.Array | None = None
  ) -> tuple[jax.Array, DiagonalGaussian]:
    """Reconstruction and posterior; samples z when `rng` is given, else uses the mean."""
    posterior = self.encode(x)
    z = posterior.mode() if rng is None else posterior.sample(rng)
    return self.decode(z), posterior


def count_params(module: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def init_rngs(seed: int) -> nnx.Rngs:
  """Rngs for parameter initialisation, from an `rbg` key.

  Measured on a 2-core CPU for the 1.2M-parameter demo model: 3.4 s to initialise eagerly and
  10 s compiled, against 18.7 s eagerly with the default threefry key (every parameter shape
  compiles its own threefry kernel). Initial values may differ between mesh layouts; that
  only matters before the first checkpoint.
  """
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def default_model_config() -> ml_collections.ConfigDict:
  """Every field a `model` config has, with the small ProMAG base as default values."""

  def side(**kw: Any) -> ml_collections.ConfigDict:
    fields = dict(
        conv_in="3d",
        conv_out="3d",
        num_res_blocks=2,
        time_padding="causal",
        norm="rmsnorm_frame",
        mid_block="3d",
        mid_attention="spatial",
        attention_norm="rmsnorm_frame",
    )
    return ml_collections.ConfigDict({**fields, **kw})

  return ml_collections.ConfigDict(
      dict(
          name="promag_base",
          in_channels=3,
          out_channels=3,
          base_channels=64,
          channel_multipliers=(1, 2, 2, 4),
          num_groups=32,
          norm_eps=1e-6,
          z_channels=8,
          double_z=True,
          latent_channels=8,
          use_quant_conv=True,
          # Diffusion models see (z - shift_factor) * scaling_factor (the diffusers convention).
          scaling_factor=1.0,
          shift_factor=0.0,
          patch_size=1,
          # Initialisation (`layers.conv_kernel_init`): "torch" as the released code, or
          # "current_frame" (every 3D conv starts as a He-initialised 2D conv of its frame);
          # the decoder's last conv kernel is multiplied by output_init_scale.
          kernel_init="torch",
          output_init_scale=1.0,
          # Every res block's branch times a learnt scalar starting at 0 (blocks.ResBlock).
          residual_gate=False,
          dtype="float32",
          remat="",  # models/remat.py: "", "block", "block_convs" or "level"
          encoder=side(blocks=("3d",) * 4, downsample=("conv3d:s", "conv3d:st", "conv3d:st", "")),
          decoder=side(
              num_res_blocks=3, blocks=("3d",) * 4, upsample=("", "d2s:s", "d2s:st", "d2s:st")
          ),
          # ProMAG growth (`models/progressive.py`): `levels` 2x temporal levels on top of this base
          # (1: 4x → 8x, 2: → 16x); 0 is the base model itself.
          growth=dict(
              levels=0,
              mixing="both",  # none | add | adanorm | both (MIXING_MODES); every level
              adanorm="scale",  # scale | scale_shift (ADANORM_MODES; see progressive.AdaNorm)
              num_res_blocks=1,  # new ResBlocks per level, in the encoder and in the decoder
              # How a new level starts (GROWTH_INITS): "fresh" (the paper: random 1×1×1 head
              # convs) or "from_lower" (the lower level's head copied, resamplers started as frame
              # selection / repetition: the grown model starts near its lower level on every other
              # latent frame; progressive.GrownEncoder).
              init="fresh",
          ),
      )
  )
