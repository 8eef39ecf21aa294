"""Import a diffusers-format image VAE (`AutoencoderKL`) into an `ImageVAE`.

    vae = load_diffusers_vae("sd-vae-ft-mse")   # config.json + diffusion_pytorch_model.safetensors

Conversion is one key rule (`diffusers_key_candidates`) given to `official.fill_params` (the
kernel-layout transpose, and one error listing every tensor not consumed and every parameter
not filled). Float32 outputs match diffusers' own model to ~1e-6
(tests/interop/test_diffusers.py).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np
from flax import nnx

from bootvae_jax.cli import UserError
from bootvae_jax.interop import official
from bootvae_jax.models import image_vae as image_vae_lib

# Our attention names → diffusers' (current, legacy); the legacy ones are what older
# checkpoints such as `sd-vae-ft-mse` store (diffusers renames them at load time too).
_ATTENTION = {
    "norm": ("group_norm",),
    "q": ("to_q", "query"),
    "k": ("to_k", "key"),
    "v": ("to_v", "value"),
    "proj_out": ("to_out.0", "proj_attn"),
}
_MID = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1": "attentions.0"}
_SUPPORTED = dict(
    act_fn="silu", down_block_types="DownEncoderBlock2D", up_block_types="UpDecoderBlock2D"
)


def image_vae_config_from_diffusers(config: Mapping[str, Any]):
  """The `image_vae_config` of a diffusers `AutoencoderKL` config (its `config.json`)."""
  k = dict(config)
  if k.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
    raise UserError(f"_class_name={k['_class_name']!r}: only AutoencoderKL folders import")
  for key, value in _SUPPORTED.items():
    given = k.get(key, value)
    if any(v != value for v in ([given] if isinstance(given, str) else given)):
      raise UserError(f"diffusers VAE: {key}={given!r} is not supported (supported: {value})")
  if k.get("use_quant_conv", True) != k.get("use_post_quant_conv", True):
    raise UserError("diffusers VAE: use_quant_conv and use_post_quant_conv must agree")
  channels = k.get("block_out_channels", (64,))
  if len(k.get("down_block_types", channels)) != len(channels):
    raise UserError("diffusers VAE: down_block_types and block_out_channels differ in length")
  return image_vae_lib.image_vae_config(
      block_out_channels=channels,
      layers_per_block=k.get("layers_per_block", 1),
      latent_channels=k.get("latent_channels", 4),
      norm_num_groups=k.get("norm_num_groups", 32),
      in_channels=k.get("in_channels", 3),
      out_channels=k.get("out_channels", 3),
      mid_attention=k.get("mid_block_add_attention", True),
      use_quant_conv=k.get("use_quant_conv", True),
      scaling_factor=k.get("scaling_factor", 0.18215),
      shift_factor=k.get("shift_factor"),
  )


def diffusers_key_candidates(path: tuple, num_levels: int) -> list[str]:
  """The diffusers names (current first, then legacy) of the parameter at nnx `path`."""
  parts = [str(p) for p in path]
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[parts[-1]]
  parts = parts[:-1]
  head, rest = parts[0], parts[1:]
  if head in ("quant_conv", "post_quant_conv"):
    return [f"{head}.{leaf}"]
  names = {"norm_out": "conv_norm_out"}
  if rest[0] in ("conv_in", "conv_out", "norm_out"):
    return [f"{head}.{names.get(rest[0], rest[0])}.{leaf}"]
  if rest[0] == "mid":
    prefix = f"{head}.mid_block.{_MID[rest[1]]}"
    tail = rest[2:]
  else:  # down/<i>/... or up/<i>/...: diffusers lists the decoder's levels lowest-res first
    level = int(rest[1])
    kind = "down_blocks" if rest[0] == "down" else "up_blocks"
    index = level if rest[0] == "down" else num_levels - 1 - level
    prefix = f"{head}.{kind}.{index}"
    if rest[2] == "block":
      prefix, tail = f"{prefix}.resnets.{rest[3]}", rest[4:]
    else:  # downsample/conv or upsample/conv
      prefix = f"{prefix}.{'downsamplers' if rest[2] == 'downsample' else 'upsamplers'}.0"
      tail = rest[3:]
  if tail[0] in _ATTENTION:
    return [f"{prefix}.{name}.{leaf}" for name in _ATTENTION[tail[0]]]
  name = "conv_shortcut" if tail[0] == "nin_shortcut" else tail[0]
  return [f"{prefix}.{name}.{leaf}"]


def _weights_file(folder: pathlib.Path) -> pathlib.Path:
  for name in (
      "diffusion_pytorch_model.safetensors",
      "diffusion_pytorch_model.fp16.safetensors",
      "diffusion_pytorch_model.bin",
  ):
    if (folder / name).is_file():
      return folder / name
  raise FileNotFoundError(
      f"{folder}: no diffusion_pytorch_model.safetensors (or .bin); is it a"
      " diffusers VAE folder (e.g. the `vae/` subfolder of a pipeline)?"
  )


def convert_state_dict(model: image_vae_lib.ImageVAE, tensors: Mapping[str, np.ndarray]) -> None:
  """Fills `model` from diffusers-named `tensors` in place; one error lists all problems."""
  num_levels = len(model.config.channel_multipliers)
  official.fill_params(
      model,
      tensors,
      lambda path: diffusers_key_candidates(path, num_levels),
      source="diffusers",
  )


def load_diffusers_vae(folder: str | os.PathLike) -> image_vae_lib.ImageVAE:
  """A float32 `ImageVAE` holding a diffusers `AutoencoderKL` folder's weights.

  Args:
    folder: holds `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin`, read
      with `weights_only=True`), as `AutoencoderKL.save_pretrained` writes them.

  The config's `scaling_factor` and `shift_factor` are kept in `model.config`.
  """
  folder = pathlib.Path(folder)
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(f"{folder}: no config.json; is it a diffusers VAE folder?")
  with open(folder / "config.json") as f:
    model_config = image_vae_config_from_diffusers(json.load(f))
  # Abstract build: every parameter is filled from the file (or we raise).
  model = nnx.eval_shape(lambda: image_vae_lib.ImageVAE(model_config, rngs=nnx.Rngs(0)))
  convert_state_dict(model, official.read_state_dict(_weights_file(folder)))
  return model
