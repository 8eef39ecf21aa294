"""A 2D AutoencoderKL in the Stable-Diffusion layout, built from the video block registry.

An image VAE here is a `VideoAutoencoder` whose every conv is per frame (`kt = 1`): SD's
encoder and decoder map one-to-one onto ours:

  SD (diffusers AutoencoderKL)             bootvae_jax model config
  conv_in 3×3                              encoder.conv_in='2d'
  DownEncoderBlock2D × n: ResnetBlock2D,   encoder.blocks='2d', downsample 'conv2d:s' (pad 1 at
    Downsample2D (pad 0,1,0,1, stride 2)     bottom/right, stride 2) at every level but the last
  UNetMidBlock2D: resnet, attention,       mid_block='2d', mid_attention='spatial' (single head,
    resnet                                   per-frame GroupNorm)
  GroupNorm, SiLU, conv_out 3×3            norm 'groupnorm_frame' (eps 1e-6), conv_out='2d'
  quant_conv / post_quant_conv 1×1         use_quant_conv
  UpDecoderBlock2D × n: layers+1 resnets,  decoder.num_res_blocks = layers_per_block + 1,
    Upsample2D (nearest 2x, conv 3×3)        upsample 'nearest2d:s' at every level but level 0

So the parameter tree is exactly a video model's (`encoder/down/0/block/0/conv1/kernel` ...),
with `kt = 1` kernels: `models.init.inflate` turns it into a 3D model's parameters, the CV-VAE
regulariser (`losses/compat.py`) runs it on every frame of a video, and the trainer trains it
on video frames like any other config (`configs/image_vae*.py`). `loading.load_image_vae` opens
one from a diffusers folder or from such a training workdir.

Diffusion models see the latent as `(z - shift_factor) * scaling_factor` (diffusers
convention); `to_diffusion_latent` / `from_diffusion_latent` apply a model config's factors.
"""

from __future__ import annotations

from typing import Sequence

import jax
import ml_collections

from bootvae_jax.cli import UserError
from bootvae_jax.models import autoencoder
from bootvae_jax.models.autoencoder import DiagonalGaussian


def image_vae_config(
    *,
    block_out_channels: Sequence[int] = (128, 256, 512, 512),
    layers_per_block: int = 2,
    latent_channels: int = 4,
    norm_num_groups: int = 32,
    in_channels: int = 3,
    out_channels: int = 3,
    mid_attention: bool = True,
    use_quant_conv: bool = True,
    scaling_factor: float = 0.18215,
    shift_factor: float = 0.0,
) -> ml_collections.ConfigDict:
  """The model config of an SD-layout image VAE (defaults: SD 1.x/2.x `sd-vae-ft-mse`).

  The arguments are diffusers `AutoencoderKL`'s; `block_out_channels` must be multiples of
  the first (every released SD-family VAE's are).
  """
  widths = [int(c) for c in block_out_channels]
  if any(c % widths[0] for c in widths):
    raise UserError(
        f"block_out_channels={tuple(widths)}: every width must be a multiple of the"
        f" first ({widths[0]}) to be expressed as base_channels x multipliers"
    )
  levels = len(widths)
  config = autoencoder.default_model_config()
  config.name = "image_vae"
  config.in_channels, config.out_channels = in_channels, out_channels
  config.base_channels = widths[0]
  config.channel_multipliers = tuple(c // widths[0] for c in widths)
  config.num_groups = norm_num_groups
  config.norm_eps = 1e-6
  config.z_channels = config.latent_channels = latent_channels
  config.double_z = True
  config.use_quant_conv = use_quant_conv
  config.scaling_factor = float(scaling_factor)
  config.shift_factor = float(shift_factor or 0.0)
  side = dict(
      conv_in="2d",
      conv_out="2d",
      time_padding="causal",
      norm="groupnorm_frame",
      mid_block="2d",
      mid_attention="spatial" if mid_attention else "none",
      attention_norm="groupnorm_frame",
  )
  config.encoder.update(
      num_res_blocks=layers_per_block,
      blocks=("2d",) * levels,
      downsample=("conv2d:s",) * (levels - 1) + ("",),
      **side,
  )
  config.decoder.update(
      num_res_blocks=layers_per_block + 1,
      blocks=("2d",) * levels,
      upsample=("",) + ("nearest2d:s",) * (levels - 1),
      **side,
  )
  return config


def image_config_problems(model_config: ml_collections.ConfigDict) -> list[str]:
  """Why `model_config` is not a per-frame (image) model; empty if it is one."""
  problems = []
  growth = model_config.get("growth")
  if growth is not None and growth.levels:
    problems.append("it has ProMAG growth levels")
  for side, resampler, allowed in (
      ("encoder", "downsample", ("conv2d:s", "")),
      ("decoder", "upsample", ("nearest2d:s", "")),
  ):
    cfg = model_config[side]
    for name in ("conv_in", "conv_out", "mid_block"):
      if cfg.get(name, "3d") != "2d":
        problems.append(f"model.{side}.{name}={cfg.get(name, '3d')!r} (needs '2d')")
    if any(b != "2d" for b in cfg.blocks):
      problems.append(f"model.{side}.blocks={tuple(cfg.blocks)} (needs all '2d')")
    if any(r not in allowed for r in cfg[resampler]):
      problems.append(f"model.{side}.{resampler}={tuple(cfg[resampler])} (allowed: {allowed})")
    if cfg.mid_attention not in ("spatial", "none"):
      problems.append(f"model.{side}.mid_attention={cfg.mid_attention!r} (needs 'spatial')")
    for name in ("norm", "attention_norm"):
      if cfg[name] == "groupnorm_clip":
        problems.append(f"model.{side}.{name}='groupnorm_clip' mixes frames")
  return problems


class ImageVAE(autoencoder.VideoAutoencoder):
  """An SD-layout image VAE: images (B, H, W, C), or videos (B, T, H, W, C) frame by frame.

  encode_images(x: (B, H, W, C_in) in [-1, 1]) -> DiagonalGaussian over (B, H/s, W/s, C_z)
  decode_images(z: (B, H/s, W/s, C_z)) -> (B, H, W, C_out)
  `encode` / `decode` / `__call__` take videos of any length (every frame on its own).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs):
    if problems := image_config_problems(config):
      raise ValueError(
          f"model config {config.name!r} is not an image VAE: "
          + "; ".join(problems)
          + ". Build it with image_vae.image_vae_config"
      )
    super().__init__(config, rngs=rngs)

  def encode_images(self, x: jax.Array) -> DiagonalGaussian:
    posterior = self.encode(x[:, None])
    return DiagonalGaussian(posterior.mean[:, 0], posterior.logvar[:, 0])

  def decode_images(self, z: jax.Array) -> jax.Array:
    return self.decode(z[:, None])[:, 0]


def to_diffusion_latent(z: jax.Array, model_config: ml_collections.ConfigDict) -> jax.Array:
  """The latent a diffusion model sees: (z - shift_factor) * scaling_factor."""
  return (z - model_config.get("shift_factor", 0.0)) * model_config.scaling_factor


def from_diffusion_latent(z: jax.Array, model_config: ml_collections.ConfigDict) -> jax.Array:
  """The inverse of `to_diffusion_latent`: what `decode` takes."""
  return z / model_config.scaling_factor + model_config.get("shift_factor", 0.0)
