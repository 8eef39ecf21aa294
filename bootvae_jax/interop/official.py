"""Import released CV-VAE / OD-VAE checkpoints into a `VideoAutoencoder`.

    model = load_official("odvae", "vae/diffusion_pytorch_model.safetensors", "vae/config.json")

Conversion is a key-mapping rule plus one kernel-layout transpose (`torch_to_flax`); every
official tensor must be consumed and every parameter filled, or one error lists what is wrong.
`fill_params` does that for every importer (here and `interop/diffusers_vae.py`), each with
its own key rule.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bootvae_jax import cli
from bootvae_jax.models import architectures
from bootvae_jax.models import blocks
from bootvae_jax.models import layers
from bootvae_jax.models.autoencoder import VideoAutoencoder

CONFIG_BUILDERS = {"cvvae": architectures.cvvae, "odvae": architectures.odvae}


# ----------------------------------------------------------------------------------------------
# Kernel layout (written once, used by import and export).


def torch_to_flax(w: np.ndarray) -> np.ndarray:
  """PyTorch weight → our layout.

  Conv3d (out, in, kt, kh, kw) → (kt, kh, kw, in, out); Conv2d (out, in, kh, kw) →
  (1, kh, kw, in, out); Linear (out, in) → (in, out); 1-D tensors unchanged.
  """
  if w.ndim == 5:
    return np.transpose(w, (2, 3, 4, 1, 0))
  if w.ndim == 4:
    return np.transpose(w, (2, 3, 1, 0))[None]
  if w.ndim == 2:
    return w.T
  return w


def flax_to_torch(w: np.ndarray, torch_ndim: int) -> np.ndarray:
  """The inverse of `torch_to_flax` for a PyTorch tensor of rank `torch_ndim`."""
  if torch_ndim == 5:
    return np.transpose(w, (4, 3, 0, 1, 2))
  if torch_ndim == 4:
    return np.transpose(w[0], (3, 2, 0, 1))
  if torch_ndim == 2:
    return w.T
  return w


# ----------------------------------------------------------------------------------------------
# Reading official files.


def read_official_config(
    config: Mapping[str, Any] | str | os.PathLike, kind: str | None = None
) -> dict[str, Any]:
  """Constructor kwargs from a dict or a `config.json` (top-level, or under
  `constructor_kwargs` as in the fixtures); keys starting with `_` are dropped.

  Args:
    config: the kwargs, or the path of a `config.json` (or of its folder).
    kind: "cvvae" or "odvae": refuse keys the official constructor of that kind does not
      take (a misspelt key would otherwise be ignored and only show up, if at all, as shape
      mismatches), naming the closest valid key.

  Raises:
    cli.UserError: a file that is not JSON, or unknown keys.
  """
  where = "config"
  if not isinstance(config, Mapping):
    path = pathlib.Path(config)
    if path.is_dir():
      path = path / "config.json"
    where = str(path)
    try:
      config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
      raise cli.UserError(f"{path}: not a JSON file ({error})") from error
    if not isinstance(config, Mapping):
      raise cli.UserError(f"{path}: expected a JSON object of constructor kwargs")
  config = dict(config.get("constructor_kwargs", config))
  kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
  if kind is not None:
    valid = architectures.official_config_keys(kind)
    if unknown := [k for k in kwargs if k not in valid]:
      closest = {key: cli.closest(key, valid) for key in unknown}
      named = [f"{k!r}" + (f" (did you mean {c!r}?)" if c else "") for k, c in closest.items()]
      listing = "" if all(closest.values()) else f"; valid keys: {', '.join(valid)}"
      raise cli.UserError(
          f"{where}: {len(unknown)} key(s) the official {kind} constructor does not take:"
          f" {', '.join(named)}{listing}"
      )
  return kwargs


def _strip_prefix(key: str, prefix: str) -> str:
  while key.startswith(prefix):
    key = key[len(prefix) :]
  return key


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Official tensors as float32 numpy arrays.

  `.safetensors` (float16 or float32), or a torch `.ckpt`/`.pt`/`.bin` holding a state dict,
  `{"state_dict": ...}` or `{"ema_state_dict": ...}` (EMA preferred, as the official loader),
  with any `module.` prefixes; torch files are read with `weights_only=True`, which refuses
  arbitrary pickled objects.

  Raises:
    FileNotFoundError: no file at `path`.
    cli.UserError: a file that is not (or no longer, e.g. truncated) of its kind, named.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no weights file at {path}")
  if path.suffix == ".safetensors":
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
      tensors = load_file(str(path))
    except SafetensorError as error:
      raise cli.UserError(
          f"{path}: not a readable safetensors file ({error}){_damage_hint(path)}"
      ) from error
  else:
    import torch

    try:
      obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pylint: disable=broad-except  (garbage raises any type)
      reason = str(error).strip().split(". ")[0]  # torch goes on about weights_only=False
      code = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(error))
      hint = (
          f"; the file holds pickled code ({code.group(1) or code.group(2)}), which is refused:"
          " weights are only read as plain tensors. Get the weights as .safetensors, or from a"
          " source you trust"
          if code
          else _damage_hint(path)
      )
      raise cli.UserError(
          f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {reason}){hint}"
      ) from error
    if isinstance(obj, Mapping) and obj.get("ema_state_dict"):
      obj = obj["ema_state_dict"]
    elif isinstance(obj, Mapping) and "state_dict" in obj:
      obj = obj["state_dict"]
      if "gen_model" in obj and isinstance(obj["gen_model"], Mapping):
        obj = obj["gen_model"]
    tensors = {k: v.float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  # DataParallel / DDP prefix keys with "module." (once per wrapping); names inside a key
  # (e.g. "submodule.") are left alone.
  tensors = {_strip_prefix(k, "module."): np.asarray(v, np.float32) for k, v in tensors.items()}
  # Training checkpoints carry the loss (LPIPS, discriminator); the official loader skips them.
  return {k: v for k, v in tensors.items() if not k.startswith("loss.")}


def _damage_hint(path: pathlib.Path) -> str:
  """Why a weights file may not read: cut short (its safetensors header promises more bytes
  than it has), or of the other kind than its suffix says."""
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    header = None
    if len(head) == 8 and 2 < (length := int.from_bytes(head, "little")) <= min(size, 1 << 27):
      try:
        header = json.loads(f.read(length))
      except ValueError:
        header = None
  if isinstance(header, dict):
    ends = [
        8 + length + int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if ends and max(ends) > size:
      return (
          f"; it has {size:,} bytes but its header describes {max(ends):,}: the file is"
          " truncated (an interrupted download or copy?)"
      )
    if path.suffix != ".safetensors":
      return "; it is a safetensors file: name it *.safetensors"
  if head.startswith(b"PK") or head[:1] == b"\x80":
    if path.suffix == ".safetensors":
      return "; it looks like a PyTorch checkpoint: name it *.ckpt (or .pt / .bin)"
    return "; the file may be truncated (an interrupted download or copy?)"
  if size == 0:
    return "; the file is empty"
  return ""


# ----------------------------------------------------------------------------------------------
# Key mapping.


def official_key_candidates(path: tuple) -> list[str]:
  """Official names a parameter at `path` (an nnx state path) may have.

  Our module tree mirrors the released ones, so the rule is: `kernel`/`scale` → `weight`;
  CV-VAE's spatio-temporal attention keeps its spatial projections at the block level
  (`attn_1.q`, not `attn_1.spatial.q`); OD-VAE wraps every 3D conv as `<name>.conv.*`.
  """
  parts = [str(p) for p in path]
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[parts[-1]]
  parts = [p for p in parts[:-1] if p != "spatial"]
  plain = ".".join(parts + [leaf])
  wrapped = ".".join(parts + ["conv", leaf])
  return [plain, wrapped]


def fill_params(
    model: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    key_rule: Callable[[tuple], Sequence[str]],
    *,
    source: str = "official",
) -> None:
  """Fills every parameter of `model` in place from PyTorch-layout `tensors`.

  Args:
    model: the module to fill (abstract or not).
    tensors: PyTorch state dict as numpy arrays.
    key_rule: nnx parameter path → the names the tensor may have, in order of preference.
    source: what made `tensors` ("official", "diffusers"), for the error message.

  Raises:
    cli.UserError: a parameter without a tensor, a tensor no parameter takes, or a shape that
      differs, all listed in one message.
  """
  params = nnx.state(model, nnx.Param)
  missing, mismatched, used = [], [], set()
  for path, variable in nnx.to_flat_state(params):
    candidates = list(key_rule(path))
    key = next((k for k in candidates if k in tensors), None)
    if key is None:
      # Every form the key may take (OD-VAE wraps 3D convs as `<name>.conv.*`).
      missing.append(" or ".join(candidates))
      continue
    used.add(key)  # found by name: a wrong shape is a mismatch, not also an unexpected key
    value, expected = torch_to_flax(tensors[key]), variable.get_value()
    if value.ndim == 2 and expected.ndim == 5 and value.size == expected.size:
      value = value.reshape(expected.shape)  # a Linear (in, out) as a 1×1×1 conv kernel
    if value.shape != expected.shape:
      mismatched.append(
          f"{key}: {source} {tuple(tensors[key].shape)} -> {value.shape},"
          f" model expects {tuple(expected.shape)}"
      )
      continue
    variable.set_value(jnp.asarray(value, expected.dtype))
  unexpected = sorted(set(tensors) - used)
  if missing or unexpected or mismatched:
    lines = [f"the {source} checkpoint does not match the model built from its config:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
      if items:
        lines.append(
            f"  {title} ({len(items)}): "
            + ", ".join(items[:20])
            + (" ..." if len(items) > 20 else "")
        )
    raise cli.UserError("\n".join(lines))
  nnx.update(model, params)


def convert_state_dict(model: VideoAutoencoder, tensors: Mapping[str, np.ndarray]) -> None:
  """Fills `model`'s parameters from official `tensors` in place; one error lists all problems."""
  fill_params(model, tensors, official_key_candidates, source="official")


def _official_conv_rank(kind: str, parent: nnx.Module, name: str, conv: layers.Conv3d) -> int:
  """Rank of the official weight of `conv` (attribute `name` of `parent`): 5 for the official
  3D convs, 4 for their `nn.Conv2d`s (the fixture READMEs in tests/fixtures list which is which)."""
  if conv.kernel_size[0] > 1:
    return 5
  if isinstance(parent, layers.SpatialAttention):  # CV-VAE: Conv2d 1x1; OD-VAE: CausalConv3d
    return 4 if kind == "cvvae" else 5
  if isinstance(parent, blocks.ResBlock):
    if parent.conv1.kernel_size[0] == 1:  # OD-VAE ResnetBlock2D: every conv is a Conv2d
      return 4
    return 5 if name == "nin_shortcut" else 4  # CV-VAE half_3d conv2: Conv2dWithExtraDim
  if name == "conv_in" or isinstance(parent, blocks.ConvDownsample):  # OD-VAE Conv2d, Downsample
    return 4
  return 5  # 1x1x1 quant convs, OD-VAE SpatialUpsample2x's (1, 3, 3) CausalConv3d


def official_state_dict(model: VideoAutoencoder, kind: str) -> dict[str, np.ndarray]:
  """The inverse of `convert_state_dict`: `model`'s parameters under the official names and
  tensor layouts of `kind` ("cvvae" or "odvae"), float32."""
  if kind not in CONFIG_BUILDERS:
    raise cli.UserError(f"kind={kind!r}; use one of {sorted(CONFIG_BUILDERS)}")
  out = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    parent = model
    for part in path[:-2]:
      parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    name = path[-2]
    module = parent[name] if isinstance(name, int) else getattr(parent, name)
    value = np.asarray(variable.get_value(), np.float32)
    plain, wrapped = official_key_candidates(path)
    if isinstance(module, layers.Conv3d):
      rank = _official_conv_rank(kind, parent, name, module)
      # OD-VAE's CausalConv3d holds its nn.Conv3d as `.conv`.
      key = wrapped if kind == "odvae" and rank == 5 else plain
      out[key] = flax_to_torch(value, rank) if path[-1] == "kernel" else value
    else:
      out[plain] = flax_to_torch(value, value.ndim)
  return out


def load_official(
    kind: str,
    weights: str | os.PathLike,
    config: Mapping[str, Any] | str | os.PathLike,
) -> VideoAutoencoder:
  """A float32 `VideoAutoencoder` holding a released CV-VAE (`kind="cvvae"`) or OD-VAE
  (`kind="odvae"`) checkpoint.

  Args:
    kind: "cvvae" or "odvae".
    weights: official-named `*.safetensors`, or for OD-VAE also a torch `.ckpt`.
    config: official constructor kwargs as a dict, or the path of an official `config.json`.
  """
  if kind not in CONFIG_BUILDERS:
    raise cli.UserError(f"kind={kind!r}; use one of {sorted(CONFIG_BUILDERS)}")
  model_config = CONFIG_BUILDERS[kind](read_official_config(config, kind))
  # Abstract build: every parameter is then filled from the checkpoint (or we raise), so a
  # random initialisation would only cost time.
  model = nnx.eval_shape(lambda: VideoAutoencoder(model_config, rngs=nnx.Rngs(0)))
  convert_state_dict(model, read_state_dict(weights))
  return model
