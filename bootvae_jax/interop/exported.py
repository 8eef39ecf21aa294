"""Export a model for PyTorch: `OUT/config.json`, `OUT/model.safetensors`, `OUT/README.md`.

    bootvae_jax.export(model, model_config, "exported/")            # any model we build
    bootvae_jax.export(model, model.config, "odvae/", format="official")  # CV-VAE / OD-VAE

Two formats:
  * `bootvae_jax` (default): parameter names of our module tree (`kernel`/`scale` → `weight`,
    AdaNorm's `scale_kernel` → `scale.weight`) in PyTorch layouts; `config.json` holds the
    `model` config. `interop/torch_model.load_exported(OUT)` rebuilds it in plain PyTorch.
  * `official`: the released CV-VAE / OD-VAE state-dict names and tensor layouts, and their
    constructor kwargs as `config.json`, for the official code (`load_official` reads it back
    bit for bit).

Kernel layouts go through `official.flax_to_torch`, the one transpose. `read_exported(OUT)` opens
either format back in JAX (`bootvae_jax.loading.load` calls it for an exported folder).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from bootvae_jax import models
from bootvae_jax.cli import UserError
from bootvae_jax.core import filesystem
from bootvae_jax.interop import official
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder

FORMATS = ("bootvae_jax", "official")
# config.json["format"] of the default format; interop/torch_model.py checks it (standalone, it
# cannot import this module).
EXPORT_FORMAT = "bootvae_jax"

# nnx parameter leaf → the PyTorch mirror's attribute path (interop/torch_model.py).
TORCH_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "scale_kernel": "scale.weight",
    "scale_bias": "scale.bias",
    "shift_kernel": "shift.weight",
    "shift_bias": "shift.bias",
    "gate": "gate",
}


def torch_key(path: tuple) -> str:
  """The PyTorch mirror's state-dict key of the nnx parameter at `path`."""
  return ".".join([str(p) for p in path[:-1]] + [TORCH_LEAF[str(path[-1])]])


def torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """`model`'s parameters as the PyTorch mirror's state dict (float32 numpy)."""
  out = {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(variable.get_value(), np.float32)
    out[torch_key(path)] = official.flax_to_torch(value, value.ndim)
  return out


def _check_config_builds_model(model: nnx.Module, model_config) -> None:
  """The exported config must rebuild exactly `model`'s parameters (names and shapes)."""
  expected = nnx.eval_shape(lambda: models.build_model(model_config))
  shapes = lambda m: {
      torch_key(p): tuple(v.get_value().shape)
      for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))
  }
  have, want = shapes(model), shapes(expected)
  if have != want:
    diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    raise ValueError(
        f"model_config does not build this model: {len(diff)} parameters differ,"
        f" e.g. {diff[:3]}; pass the config the model was built from"
    )


def model_card(
    model_config,
    *,
    format: str,
    source: Mapping[str, Any] | None,  # pylint: disable=redefined-builtin
    num_parameters: int,
    official_kind: str | None = None,
) -> str:
  """OUT/README.md: architecture, compression, frame rule, latent, scaling, provenance."""
  r, s = models.compression_factors(model_config)
  growth = model_config.get("growth")
  levels = autoencoder.growth_levels(model_config)
  enc, dec = model_config.encoder, model_config.decoder
  widths = [model_config.base_channels * m for m in model_config.channel_multipliers]
  lines = [
      f"# {model_config.name} (exported from bootvae_jax)",
      "",
      "A causal 3D video VAE. Video is `(B, C, T, H, W)` in [-1, 1].",
      "",
      "| | |",
      "|---|---|",
      f"| compression | {r}x temporal, {s}x spatial |",
      f"| frame rule | `1 + {r}k` frames → `1 + k` latent frames (e.g. {1 + r} → 2,"
      f" {1 + 4 * r} → 5); frame 0 is encoded like an image |",
      f"| latent | {model_config.latent_channels} channels at H/{s} × W/{s} |",
      f"| scaling factor | {model_config.scaling_factor} (multiply latents by it for a"
      " diffusion model; encode/decode never apply it) |",
      f"| parameters | {num_parameters:,} |",
      f"| widths | {widths} |",
      f"| encoder | blocks {list(enc.blocks)} × {enc.num_res_blocks}, downsample"
      f" {list(enc.downsample)}, {enc.time_padding} time padding, norm {enc.norm},"
      f" mid attention {enc.mid_attention} |",
      f"| decoder | blocks {list(dec.blocks)} × {dec.num_res_blocks}, upsample"
      f" {list(dec.upsample)}, {dec.time_padding} time padding, norm {dec.norm},"
      f" mid attention {dec.mid_attention} |",
  ]
  if model_config.get("patch_size", 1) > 1:
    p = model_config.patch_size
    lines.append(
        f"| patchify | {p}×{p} pixel patches on channels before the encoder, back to"
        " pixels after the decoder |"
    )
  if levels:
    lines.append(
        f"| ProMAG growth | {levels} level(s) of 2x time on a"
        f" {r // 2**levels}x base, mixing `{growth.mixing}`, AdaNorm"
        f" `{growth.adanorm}`, {growth.num_res_blocks} res block(s) per level |"
    )
  lines.append(f"| source | {json.dumps(dict(source or {}), sort_keys=True)} |")
  lines.append("")
  if format == "official":
    lines += [
        f"Official {official_kind.upper()} names and layouts (`{architectures.OFFICIAL_CLASSES[official_kind]}`;"
        " `config.json` holds its constructor kwargs):",
        "",
        "```python",
        "import safetensors.torch",
        f"model = {architectures.OFFICIAL_CLASSES[official_kind]}(**kwargs)  # kwargs from config.json",
        'model.load_state_dict(safetensors.torch.load_file("model.safetensors"))',
        "```",
        "",
        "Back into bootvae_jax: `bootvae_jax.interop.official.load_official("
        f'"{official_kind}", "model.safetensors", "config.json")`.',
        "",
    ]
  else:
    lines += [
        "Load in PyTorch with `torch_model.py` (copy it from `bootvae_jax/interop/`; it needs"
        " only torch and safetensors):",
        "",
        "```python",
        "from torch_model import load_exported",
        'vae = load_exported("<this folder>")           # torch.nn.Module, eval mode',
        "mean, logvar = vae.encode(video)              # video: (B, 3, T, H, W) in [-1, 1]",
        "recon = vae.decode(mean)",
        "```",
        "",
    ]
  return "\n".join(lines)


def _write_atomic(path: pathlib.Path, write) -> None:
  tmp = path.with_name(path.name + ".tmp")
  try:
    write(str(tmp))
    # Like every other file written: the umask's mode (safetensors creates its file 0600).
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def export(
    model: nnx.Module,
    model_config: ml_collections.ConfigDict,
    out: str | os.PathLike,
    *,
    format: str = "bootvae_jax",  # pylint: disable=redefined-builtin
    source: Mapping[str, Any] | None = None,
) -> pathlib.Path:
  """Writes `out/config.json`, `out/model.safetensors` (float32) and `out/README.md`.

  Args:
    model: a `VideoAutoencoder` or `GrownAutoencoder` (e.g. from a workdir or `load_official`).
    model_config: the `model` config it was built from (e.g. `model.config`).
    out: the output folder (created; a local path or a URL such as gs://..., written
      through `core/filesystem.py`).
    format: "bootvae_jax" (for `torch_model.load_exported`) or "official" (CV-VAE / OD-VAE
      layouts only: the official names, layouts and constructor kwargs).
    source: provenance for the model card and config.json (workdir, step, ...).

  Returns:
    The output folder.
  """
  if format not in FORMATS:
    raise UserError(f"format={format!r}; use one of {FORMATS}")
  model_config = ml_collections.ConfigDict(json.loads(model_config.to_json()))
  models.validate_model_config(model_config)
  _check_config_builds_model(model, model_config)
  num_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  source = dict(source or {})
  official_kind = None
  if format == "official":
    official_kind, kwargs = architectures.official_layout(model_config)
    tensors = official.official_state_dict(model, official_kind)
    config = {
        "_class_name": architectures.OFFICIAL_CLASSES[official_kind],
        **kwargs,
        "_bootvae_jax": {"kind": official_kind, "source": source},
    }
  else:
    tensors = torch_state_dict(model)
    r, s = models.compression_factors(model_config)
    config = {
        "format": EXPORT_FORMAT,
        "format_version": 1,
        "temporal_compression": r,
        "spatial_compression": s,
        "latent_channels": model_config.latent_channels,
        "scaling_factor": model_config.scaling_factor,
        "num_parameters": num_parameters,
        "source": source,
        "model": model_config.to_dict(),
    }
  filesystem.check_output_dir("out", out)
  with filesystem.local_output_dir(out) as local:
    _write_files(
        pathlib.Path(local),
        tensors,
        config,
        format,
        source,
        model_config,
        num_parameters,
        official_kind,
    )
  return filesystem.path(out) if filesystem.is_url(out) else pathlib.Path(out)


def _write_files(out, tensors, config, format, source, model_config, num_parameters, official_kind):  # pylint: disable=redefined-builtin
  """The three files of `export`, each written atomically into the local folder `out`."""
  out.mkdir(parents=True, exist_ok=True)
  metadata = {"format": format, "source": json.dumps(source, sort_keys=True)}
  _write_atomic(
      out / "model.safetensors",
      lambda p: save_file(
          {k: np.ascontiguousarray(v) for k, v in tensors.items()}, p, metadata=metadata
      ),
  )
  text = json.dumps(config, indent=2, default=list)
  _write_atomic(out / "config.json", lambda p: pathlib.Path(p).write_text(text + "\n"))
  card = model_card(
      model_config,
      format=format,
      source=source,
      num_parameters=num_parameters,
      official_kind=official_kind,
  )
  _write_atomic(out / "README.md", lambda p: pathlib.Path(p).write_text(card))


def read_exported(folder: str | os.PathLike) -> nnx.Module:
  """The float32 model of a folder `export` wrote, in either format.

  `bootvae_jax` format: built abstractly from `config.json["model"]` and filled from
  `model.safetensors` by `torch_key` name, every parameter or a `UserError` listing what is
  missing; `official` format: `official.load_official` of its kind.
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  folder = pathlib.Path(folder)
  config = json.loads((folder / "config.json").read_text())
  weights = folder / "model.safetensors"
  if "_bootvae_jax" in config:
    return official.load_official(config["_bootvae_jax"]["kind"], weights, folder / "config.json")
  if config.get("format") != EXPORT_FORMAT:
    raise UserError(f"{folder}/config.json: format={config.get('format')!r}, not an export")
  model_config = ml_collections.ConfigDict(config["model"])
  model = nnx.eval_shape(lambda: models.build_model(model_config))
  tensors = load_file(str(weights))
  params = nnx.state(model, nnx.Param)
  missing = []
  for path, variable in params.flat_state():
    key = torch_key(path)
    if key not in tensors:
      missing.append(key)
      continue
    value = official.torch_to_flax(tensors[key])
    if value.shape != variable.get_value().shape:
      raise UserError(
          f"{weights}: {key} has shape {tensors[key].shape}, the model built from its"
          f" config.json needs {variable.get_value().shape} (in PyTorch layout)"
      )
    variable.set_value(jnp.asarray(value, variable.get_value().dtype))
  if missing or len(tensors) != len(list(params.flat_state())):
    raise UserError(
        f"{weights} does not hold the model its config.json builds: {len(missing)} missing"
        f" tensors, e.g. {missing[:5]}"
    )
  nnx.update(model, params)
  return model
