"""Export to PyTorch: `bootvae_jax.export` + `interop/torch_model.py` reproduce the JAX model.

Every architecture the config language builds, at tiny widths, with random parameters (norm
scales, biases and AdaNorm maps moved away from their initial values): float32 encode and
decode match JAX to 1e-4. Fixture-free except the official round trip (tests/fixtures).
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx

import bootvae_jax
from bootvae_jax.interop import exported
from bootvae_jax.interop import official
from bootvae_jax.interop import torch_model
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder
from bootvae_jax.models import progressive
from bootvae_jax.ops import conv as conv_ops

REPO = pathlib.Path(__file__).resolve().parents[2]
TOL = 1e-4


@pytest.fixture(autouse=True)
def _xla_convs():
  """Convs traced with `ops.conv`'s "xla" implementation, which compiles fastest on CPU
  (tests/ops check the implementations agree)."""
  with conv_ops.forced_implementation("xla"):
    yield


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
  """Tiny models compile ~4x faster without XLA's optimisation passes (2.4 s instead of 10.7 s
  of CPU for the 16x model, with the "xla" conv), and run in milliseconds either way."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def random_model(config, seed: int = 0):
  """The model of `config`, every parameter drawn by numpy (AdaNorm and norms not identity)."""
  model = nnx.eval_shape(lambda: progressive.build_model(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape, leaf = variable.get_value().shape, path[-1]
    if leaf == "kernel":
      bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    elif leaf == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:  # biases, AdaNorm kernels
      value = 0.1 * rng.standard_normal(shape)
    variable.set_value(jnp.asarray(value, jnp.float32))
  return model


def tiny_promag_base():
  """The promag_base layout (4 levels, d2s upsampling, mean-free norms, spatial attention)."""
  return architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, num_groups=4
  )


def tiny_grown(levels: int, mixing: str, adanorm: str = "scale", patch_size: int = 1):
  """8x (levels=1) / 16x (levels=2) on a 3-level 4x-time, 4x-space base without attention
  (times `patch_size` in space)."""
  config = architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 2), num_res_blocks=1, num_groups=4
  )
  config.encoder.update(
      blocks=("3d",) * 3, downsample=("conv3d:s", "conv3d:st", "conv3d:t"), mid_attention="none"
  )
  config.decoder.update(blocks=("3d",) * 3, upsample=("", "d2s:st", "d2s:st"), mid_attention="none")
  config.growth = autoencoder.default_model_config().growth
  config.growth.update(levels=levels, mixing=mixing, adanorm=adanorm)
  config.patch_size = patch_size
  return config


def tiny_gated_grown():
  """Every res block (levels, mid blocks, the growth level) with its `model.residual_gate`."""
  config = tiny_grown(1, "both")
  config.residual_gate = True
  return config


def tiny_grown_from_lower():
  """16x, every level's head the base's (3×3×3 convs and quant convs): `growth.init=
  'from_lower'`."""
  config = tiny_grown(2, "both")
  config.update(residual_gate=True, use_quant_conv=True)
  config.growth.init = "from_lower"
  return config


def tiny_cvvae():
  config = architectures.cvvae(
      dict(architectures.cvvae_released_kwargs(), ch=8, ch_mult=[1, 1, 2, 2], num_res_blocks=1)
  )
  config.num_groups = 4
  return config


def tiny_odvae(variant: int):
  config = architectures.odvae_variant(
      variant, hidden_size=8, hidden_size_mult=[1, 1, 2, 2], num_res_blocks=1
  )
  config.num_groups = 4
  return config


# name -> (config, input (frames, size)).
MODELS = {"promag_base": (tiny_promag_base, (5, 16))}
for _levels, _factor in ((1, 8), (2, 16)):
  for _mixing in autoencoder.MIXING_MODES:
    MODELS[f"grown{_factor}x_{_mixing}"] = (lambda l=_levels, m=_mixing: tiny_grown(l, m), (17, 8))
  MODELS[f"grown{_factor}x_both_scale_shift"] = (
      lambda l=_levels: tiny_grown(l, "both", "scale_shift"),
      (17, 8),
  )
MODELS["grown8x_patch2"] = (lambda: tiny_grown(1, "both", patch_size=2), (9, 16))
MODELS["grown8x_residual_gate"] = (tiny_gated_grown, (9, 8))
MODELS["grown16x_from_lower"] = (tiny_grown_from_lower, (17, 8))
MODELS["cvvae"] = (tiny_cvvae, (5, 16))
for _variant in (1, 2, 3, 4):
  MODELS[f"odvae_v{_variant}"] = (lambda v=_variant: tiny_odvae(v), (5, 16))


def to_torch(x) -> torch.Tensor:
  """(B, T, H, W, C) → (B, C, T, H, W)."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 4, 1, 2, 3))))


def to_jax_layout(x: torch.Tensor) -> np.ndarray:
  return np.transpose(x.detach().numpy(), (0, 2, 3, 4, 1))


@nnx.jit
def jax_outputs(model, x):
  posterior = model.encode(x)
  return posterior.mean, posterior.logvar, model.decode(posterior.mean)


def _max_err(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_model_matches_jax(name, tmp_path):
  make_config, (frames, size) = MODELS[name]
  config = make_config()
  model = random_model(config)
  x = np.random.default_rng(1).uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32)
  mean, logvar, recon = jax_outputs(model, x)

  bootvae_jax.export(model, config, tmp_path)
  torch_vae = torch_model.load_exported(tmp_path)
  r, s = autoencoder.compression_factors(config)
  assert (torch_vae.temporal_factor, torch_vae.spatial_factor) == (r, s)
  with torch.no_grad():
    t_mean, t_logvar = torch_vae.encode(to_torch(x))
    t_recon = torch_vae.decode(to_torch(mean))
  assert t_mean.shape == (1, 4, 1 + (frames - 1) // r, size // s, size // s)
  assert t_recon.shape == (1, 3, frames, size, size)
  errors = [
      _max_err(a, to_jax_layout(b))
      for a, b in ((mean, t_mean), (logvar, t_logvar), (recon, t_recon))
  ]
  print(name, "max |jax - torch| mean, logvar, recon:", errors)
  assert max(errors) <= TOL
  # Not vacuous: the latent varies and the reconstruction is not a constant.
  assert float(np.std(np.asarray(mean))) > 1e-2 and float(np.std(np.asarray(recon))) > 1e-2


def test_state_dict_names_and_layouts():
  model = random_model(tiny_grown(1, "both", "scale_shift"))
  tensors = exported.torch_state_dict(model)
  kernel = np.asarray(model.encoder.block[0].conv1.kernel[...])  # (kt, kh, kw, in, out)
  np.testing.assert_array_equal(
      tensors["encoder.block.0.conv1.weight"], np.transpose(kernel, (4, 3, 0, 1, 2))
  )
  scale = np.asarray(model.encoder.adanorm.scale_kernel[...])  # used as pooled @ scale
  np.testing.assert_array_equal(tensors["encoder.adanorm.scale.weight"], scale.T)
  assert "encoder.adanorm.shift.bias" in tensors
  assert tensors["encoder.lower.down.0.block.0.norm1.weight"].shape == (8,)
  torch_vae = torch_model.VideoAutoencoder(tiny_grown(1, "both", "scale_shift").to_dict())
  assert set(torch_vae.state_dict()) == set(tensors)


def test_torch_model_runs_where_jax_cannot_be_imported(tmp_path):
  """torch_model.py copied alone next to an export, in a process where `import jax` fails."""
  config = tiny_grown(1, "both")
  model = random_model(config, seed=3)
  x = np.random.default_rng(2).uniform(-1, 1, (1, 9, 8, 8, 3)).astype(np.float32)
  mean, logvar, recon = jax_outputs(model, x)
  bootvae_jax.export(model, config, tmp_path / "export")
  project = tmp_path / "project"
  project.mkdir()
  shutil.copy(REPO / "bootvae_jax" / "interop" / "torch_model.py", project)
  np.savez(tmp_path / "io.npz", x=x)
  script = f"""
import sys
sys.modules["jax"] = None  # any `import jax` now raises ImportError
try:
  import jax
  raise SystemExit("jax imported")
except ImportError:
  pass
import numpy as np, torch
from torch_model import load_exported
assert not any(m == "jax" or m.startswith(("jax.", "flax", "bootvae_jax")) for m in sys.modules
               if sys.modules[m] is not None)
vae = load_exported({str(tmp_path / "export")!r})
x = torch.from_numpy(np.load({str(tmp_path / "io.npz")!r})["x"]).permute(0, 4, 1, 2, 3)
with torch.no_grad():
  mean, logvar = vae.encode(x)
  recon = vae.decode(mean)
np.savez({str(tmp_path / "out.npz")!r}, mean=mean.numpy(), logvar=logvar.numpy(),
         recon=recon.numpy())
"""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
      [sys.executable, "-c", script],
      cwd=project,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as out:
    for name, reference in (("mean", mean), ("logvar", logvar), ("recon", recon)):
      assert _max_err(reference, np.transpose(out[name], (0, 2, 3, 4, 1))) <= TOL, name


def test_torch_frame_rule_and_non_export_folder(tmp_path):
  vae = torch_model.VideoAutoencoder(tiny_promag_base().to_dict())
  with pytest.raises(
      ValueError,
      match=r"clip has 8 frames; a 4x causal model needs 1\+4k" r" frames \(e.g. 5 or 9\)",
  ):
    vae.encode(torch.zeros(1, 3, 8, 16, 16))
  with pytest.raises(ValueError, match="not divisible by the spatial factor 8"):
    vae.encode(torch.zeros(1, 3, 5, 12, 16))
  (tmp_path / "config.json").write_text(json.dumps({"ch": 128}))
  with pytest.raises(ValueError, match="not a bootvae_jax export"):
    torch_model.load_exported(tmp_path)


# ----------------------------------------------------------------------------------------------
# What is written.


def test_model_card_and_config(tmp_path):
  config = tiny_grown(2, "adanorm")
  model = random_model(config)
  source = {"workdir": "gs://bucket/run", "step": 1200, "ema": True}
  bootvae_jax.export(model, config, tmp_path, source=source)
  assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "model.safetensors"]
  written = json.loads((tmp_path / "config.json").read_text())
  assert (written["temporal_compression"], written["spatial_compression"]) == (16, 4)
  assert written["latent_channels"] == 4 and written["source"] == source
  assert written["model"]["growth"]["mixing"] == "adanorm"
  card = (tmp_path / "README.md").read_text()
  for text in (
      "16x temporal, 4x spatial",
      "`1 + 16k` frames → `1 + k` latent frames",
      "4 channels at H/4 × W/4",
      "scaling factor | 1.0",
      "2 level(s) of 2x time on a" " 4x base, mixing `adanorm`",
      '"step": 1200',
      "gs://bucket/run",
  ):
    assert text in card, text


def test_config_that_does_not_build_the_model_is_refused(tmp_path):
  model = random_model(tiny_grown(1, "both"))
  with pytest.raises(ValueError, match="model_config does not build this model"):
    bootvae_jax.export(model, tiny_grown(1, "none"), tmp_path)  # no AdaNorm parameters
  with pytest.raises(ValueError, match="format='onnx'"):
    bootvae_jax.export(model, tiny_grown(1, "both"), tmp_path, format="onnx")


# ----------------------------------------------------------------------------------------------
# --format=official.


@pytest.mark.parametrize("kind", ["cvvae", "odvae"])
def test_official_round_trip_is_bit_exact(kind, fixtures_dir, tmp_path):
  directory = fixtures_dir / kind
  model = official.load_official(kind, directory / "weights.safetensors", directory / "config.json")
  bootvae_jax.export(model, model.config, tmp_path, format="official")
  original = safetensors.numpy.load_file(str(directory / "weights.safetensors"))
  written = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  assert sorted(written) == sorted(original)
  for key, value in original.items():  # the fixture stores float16; we write float32
    assert written[key].shape == value.shape, key
    np.testing.assert_array_equal(written[key], value.astype(np.float32), err_msg=key)
    np.testing.assert_array_equal(
        written[key].astype(np.float16).view(np.uint16), value.view(np.uint16), err_msg=key
    )
  kwargs = official.read_official_config(tmp_path)
  reference = official.read_official_config(directory / "config.json")
  assert {k: kwargs[k] for k in reference if k in kwargs} == {
      k: reference[k] for k in reference if k in kwargs
  }
  assert (
      json.loads((tmp_path / "config.json").read_text())["_class_name"]
      == {"cvvae": "CVVAEModel", "odvae": "CausalVAEModel"}[kind]
  )
  reloaded = official.load_official(kind, tmp_path / "model.safetensors", tmp_path)
  for (path, a), (_, b) in zip(
      nnx.to_flat_state(nnx.state(model, nnx.Param)),
      nnx.to_flat_state(nnx.state(reloaded, nnx.Param)),
  ):
    np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


def test_official_layout_names_2d_and_3d_convs():
  """OD-VAE's ResnetBlock2D shortcut is an nn.Conv2d (not in the fixture, which has no width
  change in a 2D block); a 3D block's is a CausalConv3d; CV-VAE's attention uses Conv2d."""
  config = architectures.odvae_variant(
      4, hidden_size=32, hidden_size_mult=[1, 2, 2, 2], num_res_blocks=1
  )
  kind, kwargs = architectures.official_layout(config)
  assert kind == "odvae" and kwargs["hidden_size_mult"] == [1, 2, 2, 2]
  shapes = {
      k: v.shape for k, v in official.official_state_dict(random_model(config), "odvae").items()
  }
  assert shapes["encoder.down.1.block.0.nin_shortcut.weight"] == (64, 32, 1, 1)
  assert shapes["encoder.down.0.downsample.conv.weight"] == (32, 32, 3, 3)
  assert shapes["decoder.up.1.upsample.conv.conv.weight"] == (64, 64, 1, 3, 3)
  assert shapes["encoder.mid.attn_1.q.conv.weight"] == (64, 64, 1, 1, 1)
  assert shapes["quant_conv.conv.weight"] == (8, 8, 1, 1, 1)
  with pytest.raises(ValueError, match="neither the CV-VAE nor the OD-VAE layout"):
    architectures.official_layout(tiny_grown(1, "both"))
  with pytest.raises(ValueError, match="neither the CV-VAE nor the OD-VAE layout"):
    architectures.official_layout(tiny_promag_base())


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_official_layout_inverts_the_odvae_variants(variant):
  config = architectures.odvae_variant(variant)
  kind, kwargs = architectures.official_layout(config)
  assert kind == "odvae"
  rebuilt = architectures.odvae(kwargs)
  assert rebuilt.encoder == config.encoder and rebuilt.decoder == config.decoder
  config = architectures.cvvae(dict(architectures.cvvae_released_kwargs(), half_3d=False))
  assert architectures.official_layout(config)[1]["half_3d"] is False
