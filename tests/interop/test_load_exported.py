"""`torch_model.load_exported` refuses a damaged export in one error naming the file and key."""

import json

import pytest
from safetensors.torch import save_file

from bootvae_jax.interop import torch_model
from bootvae_jax.models import autoencoder

import tiny


def _export(folder):
  """A bootvae_jax-format folder as `export` writes it, made on the PyTorch side alone."""
  model_config = tiny.tiny_model_config(channel_multipliers=(1, 1)).to_dict()
  config = dict(
      format="bootvae_jax",
      format_version=1,
      temporal_compression=4,
      spatial_compression=2,
      latent_channels=4,
      scaling_factor=1.0,
      num_parameters=0,
      source={},
      model=json.loads(json.dumps(model_config)),
  )
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(config))
  model = torch_model.VideoAutoencoder(config["model"])
  save_file(
      {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
  )
  return config


def _rewrite(folder, change):
  config = json.loads((folder / "config.json").read_text())
  change(config)
  (folder / "config.json").write_text(json.dumps(config))


def test_the_known_keys_are_the_model_configs_fields():
  fields = autoencoder.default_model_config().to_dict()
  assert set(fields) <= torch_model._MODEL_KEYS
  for section, known in torch_model._MODEL_SECTION_KEYS.items():
    assert set(fields[section]) <= known, section


def test_errors_name_the_file_and_the_key(tmp_path):
  good = tmp_path / "good"
  _export(good)
  assert torch_model.load_exported(good).latent_channels == 4

  cases = {
      "top": (lambda c: c.update(extra=1), "config.json: unknown key 'extra'"),
      "model": (lambda c: c["model"].update(base_channel=8), "unknown key 'model.base_channel'"),
      "section": (
          lambda c: c["model"]["encoder"].update(blockz=1),
          "unknown key 'model.encoder.blockz'",
      ),
      "missing": (
          lambda c: c["model"].pop("z_channels"),
          "config.json: the required key 'z_channels' is missing",
      ),
  }
  for name, (change, message) in cases.items():
    folder = tmp_path / name
    _export(folder)
    _rewrite(folder, change)
    with pytest.raises(torch_model.ExportError) as error:
      torch_model.load_exported(folder)
    assert str(error.value).startswith(str(folder / "config.json")), name
    assert message in str(error.value), (name, str(error.value))

  folder = tmp_path / "truncated"
  _export(folder)
  weights = folder / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
  with pytest.raises(torch_model.ExportError, match=f"^{weights}: not a readable safetensors"):
    torch_model.load_exported(folder)
