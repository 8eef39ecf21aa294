"""Tests for `bootvae_jax.interop.official`: parity with the official PyTorch CV-VAE and
OD-VAE (fixtures in tests/fixtures, see their READMEs), checkpoint formats, errors and
parameter counts.

Fixture arrays are NCTHW; ours are NTHWC.
"""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from flax import nnx

from bootvae_jax import cli
from bootvae_jax.interop import official
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder

KINDS = ["cvvae", "odvae"]
TOL = 1e-4


def to_nthwc(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 4, 1)))


def _max_err(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


@nnx.jit
def encode(model, x):
  posterior = model.encode(x)
  return posterior.mean, posterior.logvar


@nnx.jit
def decode(model, z):
  return model.decode(z)


def _params(model) -> dict[str, np.ndarray]:
  return {
      "/".join(map(str, path)): np.asarray(v.get_value())
      for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


def _assert_same_params(model, reference):
  a, b = _params(model), _params(reference)
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  """kind -> (directory, config.json contents, io.npz arrays)."""
  out = {}
  for kind in KINDS:
    directory = fixtures_dir / kind
    with open(directory / "config.json") as f:
      config = json.load(f)
    with np.load(directory / "io.npz") as npz:
      arrays = {k: npz[k] for k in npz.files}
    out[kind] = (directory, config, arrays)
  return out


@pytest.fixture(scope="module")
def loaded(fixture):
  """kind -> the fixture's weights loaded with `load_official` from its config.json."""
  return {
      kind: official.load_official(kind, d / "weights.safetensors", d / "config.json")
      for kind, (d, _, _) in fixture.items()
  }


# ----------------------------------------------------------------------------------------------
# Parity with the official outputs.


@pytest.mark.parametrize("kind", KINDS)
def test_parity_17_frames(kind, fixture, loaded):
  _, _, arrays = fixture[kind]
  model = loaded[kind]
  mean, logvar = encode(model, to_nthwc(arrays["x"]))
  assert _max_err(mean, to_nthwc(arrays["posterior_mean"])) <= TOL
  assert _max_err(logvar, to_nthwc(arrays["posterior_logvar"])) <= TOL
  recon = decode(model, to_nthwc(arrays["posterior_mean"]))
  assert recon.shape == (1, 17, 64, 64, 3)
  assert _max_err(recon, to_nthwc(arrays["recon"])) <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_parity_33_frames_untiled(kind, fixture, loaded):
  _, _, arrays = fixture[kind]
  model = loaded[kind]
  mean, logvar = encode(model, to_nthwc(arrays["x_long"]))
  assert mean.shape == (1, 9, 4, 4, 4)
  assert _max_err(mean, to_nthwc(arrays["latent_long_untiled"])) <= TOL
  assert _max_err(logvar, to_nthwc(arrays["latent_long_untiled_logvar"])) <= TOL
  recon = decode(model, to_nthwc(arrays["latent_long_untiled"]))
  assert _max_err(recon, to_nthwc(arrays["recon_long_untiled"])) <= TOL


# ----------------------------------------------------------------------------------------------
# Checkpoint formats and config forms.


def _torch_state_dict(directory) -> dict[str, torch.Tensor]:
  return safetensors.torch.load_file(str(directory / "weights.safetensors"))


def test_odvae_torch_checkpoints_load_identically(fixture, loaded, tmp_path):
  directory, _, _ = fixture["odvae"]
  sd = _torch_state_dict(directory)
  assert all(v.dtype == torch.float16 for v in sd.values())
  garbage = {k: torch.zeros_like(v) for k, v in sd.items()}
  checkpoints = {
      "state_dict.ckpt": {"state_dict": sd},
      # EMA weights win over the plain ones, "module." prefixes are dropped.
      "ema.ckpt": {
          "ema_state_dict": {"module." + k: v for k, v in sd.items()},
          "state_dict": garbage,
      },
      # An empty EMA dict falls back to state_dict; gen_model is unwrapped.
      "gen_model.ckpt": {"ema_state_dict": {}, "state_dict": {"gen_model": sd}},
      # Training checkpoints carry the loss modules: skipped, as the official loader does.
      "with_loss.ckpt": {
          "state_dict": {**sd, "loss.discriminator.main.0.weight": torch.ones(4, 3, 3, 3, 3)}
      },
  }
  for name, obj in checkpoints.items():
    torch.save(obj, tmp_path / name)
    model = official.load_official("odvae", tmp_path / name, directory / "config.json")
    _assert_same_params(model, loaded["odvae"])
  float32 = {k: v.float().numpy() for k, v in sd.items()}
  safetensors.numpy.save_file(float32, str(tmp_path / "float32.safetensors"))
  model = official.load_official("odvae", tmp_path / "float32.safetensors", directory)
  _assert_same_params(model, loaded["odvae"])


def test_only_a_leading_module_prefix_is_stripped(tmp_path):
  """DataParallel's "module." is a key prefix; "submodule." inside a key is a name."""
  one = torch.ones(2)
  torch.save(
      {
          "state_dict": {
              "module.encoder.submodule.weight": one,
              "module.module.decoder.bias": one,
              "decoder.module.bias": one,
          }
      },
      tmp_path / "wrapped.ckpt",
  )
  assert sorted(official.read_state_dict(tmp_path / "wrapped.ckpt")) == [
      "decoder.bias",
      "decoder.module.bias",
      "encoder.submodule.weight",
  ]


@pytest.mark.parametrize("kind", KINDS)
def test_config_as_a_dict_of_kwargs(kind, fixture, loaded):
  directory, config, _ = fixture[kind]
  kwargs = dict(config["constructor_kwargs"])
  model = official.load_official(kind, directory / "weights.safetensors", kwargs)
  _assert_same_params(model, loaded[kind])
  assert official.read_official_config(kwargs) == official.read_official_config(
      directory / "config.json"
  )


def test_unknown_kind_is_refused(fixture):
  directory, _, _ = fixture["cvvae"]
  with pytest.raises(ValueError, match="kind='sdvae'"):
    official.load_official("sdvae", directory / "weights.safetensors", directory)


def test_kernel_layout_round_trip():
  rng = np.random.default_rng(0)
  for shape in [(5, 4, 3, 3, 3), (5, 4, 3, 3), (5, 4), (5,)]:
    w = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(official.flax_to_torch(official.torch_to_flax(w), len(shape)), w)
  w = rng.standard_normal((5, 4, 1, 2, 3))
  assert official.torch_to_flax(w).shape == (1, 2, 3, 4, 5)
  assert official.torch_to_flax(w)[0, 1, 2, 3, 4] == w[4, 3, 0, 1, 2]
  assert official.torch_to_flax(w[:, :, 0]).shape == (1, 2, 3, 4, 5)


# ----------------------------------------------------------------------------------------------
# Checkpoints that do not match the config.


def _load_modified(kind, fixture, tmp_path, modify):
  directory, _, _ = fixture[kind]
  tensors = safetensors.numpy.load_file(str(directory / "weights.safetensors"))
  modify(tensors)
  path = tmp_path / f"{kind}_modified.safetensors"
  safetensors.numpy.save_file(tensors, str(path))
  return official.load_official(kind, path, directory / "config.json")


@pytest.mark.parametrize(
    "kind,key",
    [
        ("cvvae", "decoder.mid.attn_1.q_t.weight"),
        ("odvae", "encoder.down.2.block.0.conv1.conv.weight"),
        ("odvae", "encoder.conv_in.weight"),
    ],
)
def test_missing_key_is_named(kind, key, fixture, tmp_path):
  with pytest.raises(ValueError, match=r"missing keys \(1\): .*" + key.replace(".", r"\.")):
    _load_modified(kind, fixture, tmp_path, lambda t: t.pop(key))


@pytest.mark.parametrize("kind", KINDS)
def test_unexpected_key_is_named(kind, fixture, tmp_path):
  def add(tensors):
    tensors["encoder.down.0.block.9.conv1.weight"] = np.zeros((2, 2), np.float16)

  with pytest.raises(
      ValueError, match=r"unexpected keys \(1\): encoder\.down\.0\.block\.9\." r"conv1\.weight"
  ):
    _load_modified(kind, fixture, tmp_path, add)


@pytest.mark.parametrize(
    "kind,key", [("cvvae", "decoder.conv_out.weight"), ("odvae", "decoder.conv_out.conv.weight")]
)
def test_wrong_shape_is_named(kind, key, fixture, tmp_path):
  def reshape(tensors):
    tensors[key] = tensors[key][:, :, :1]  # (3, 32, 3, 3, 3) -> (3, 32, 1, 3, 3)

  with pytest.raises(
      ValueError,
      match=r"shape mismatches \(1\): "
      + key.replace(".", r"\.")
      + r": official \(3, 32, 1, 3, 3\)",
  ) as info:
    _load_modified(kind, fixture, tmp_path, reshape)
  assert "missing" not in str(info.value) and "unexpected" not in str(info.value)


def test_all_problems_in_one_error(fixture, tmp_path):
  def break_three(tensors):
    tensors.pop("encoder.conv_in.weight")
    tensors["extra.weight"] = np.zeros(3, np.float16)
    tensors["decoder.conv_out.bias"] = np.zeros(4, np.float16)

  with pytest.raises(ValueError) as info:
    _load_modified("cvvae", fixture, tmp_path, break_three)
  message = str(info.value)
  for part in (
      "missing keys (1): encoder.conv_in.weight",
      "unexpected keys (1): extra.weight",
      "shape mismatches (1): decoder.conv_out.bias",
  ):
    assert part in message


# ----------------------------------------------------------------------------------------------
# Config files and weights files that are not what they claim.


@pytest.mark.parametrize(
    "kind,typo,valid",
    [("cvvae", "num_res_block", "num_res_blocks"), ("odvae", "hiden_size", "hidden_size")],
)
def test_misspelt_config_key_is_refused_with_the_closest_valid_key(
    kind, typo, valid, fixture, tmp_path
):
  directory, config, _ = fixture[kind]
  kwargs = dict(config["constructor_kwargs"])
  kwargs[typo] = kwargs.pop(valid)
  path = tmp_path / "config.json"
  path.write_text(json.dumps(kwargs))
  with pytest.raises(cli.UserError) as info:
    official.load_official(kind, directory / "weights.safetensors", path)
  assert str(info.value) == (
      f"{path}: 1 key(s) the official {kind} constructor does not take:"
      f" {typo!r} (did you mean {valid!r}?)"
  )
  # A key like no valid one: every valid key is listed; a dict names no file.
  with pytest.raises(cli.UserError) as info:
    official.read_official_config(dict(kwargs, colour=1), kind)
  assert str(info.value).startswith(
      f"config: 2 key(s) the official {kind} constructor does not take: {typo!r} (did you"
      f" mean {valid!r}?), 'colour'; valid keys: "
  )
  assert str(info.value).endswith(", ".join(architectures.official_config_keys(kind)))


def test_released_config_files_keep_loading(fixture):
  """What released config.json files hold besides the layout: `_`-keys (diffusers'), CV-VAE's
  runtime switches (the fixture's constructor_kwargs use all of them), OD-VAE's training
  settings (as in Open-Sora-Plan's released CausalVAE configs)."""
  for kind in KINDS:
    _, config, _ = fixture[kind]
    assert official.read_official_config(config["constructor_kwargs"], kind) == dict(
        config["constructor_kwargs"]
    )
  released = dict(
      architectures.odvae_released_kwargs(),
      _class_name="CausalVAEModel",
      _diffusers_version="0.27.2",
      lr=1e-5,
      loss_type="opensora.models.ae.videobase.losses.LPIPSWithDiscriminator3D",
      loss_params=dict(disc_start=2001, kl_weight=1e-6),
      in_channels=3,
      out_channels=3,
  )
  kwargs = official.read_official_config(released, "odvae")
  assert "_class_name" not in kwargs and kwargs["lr"] == 1e-5


def test_damaged_weights_files_are_named(fixture, tmp_path):
  directory, _, _ = fixture["odvae"]
  data = (directory / "weights.safetensors").read_bytes()
  files = {
      "truncated.safetensors": data[:100_000],
      "empty.safetensors": b"",
      "text.safetensors": b"<html>404 Not Found</html>",
      "safetensors.ckpt": data,
  }
  torch.save({"state_dict": _torch_state_dict(directory)}, tmp_path / "full.ckpt")
  checkpoint = (tmp_path / "full.ckpt").read_bytes()
  files["torch.safetensors"] = checkpoint
  files["truncated.ckpt"] = checkpoint[: len(checkpoint) // 2]
  torch.save({"state_dict": _Pickled()}, tmp_path / "pickled.ckpt")  # code, not weights
  files["pickled.ckpt"] = (tmp_path / "pickled.ckpt").read_bytes()
  for name, content in files.items():
    (tmp_path / name).write_bytes(content)
  expected = {
      "truncated.safetensors": (
          "not a readable safetensors file (Error while deserializing header: incomplete"
          " metadata, file not fully covered); it has 100,000 bytes but its header describes"
          f" {len(data):,}: the file is truncated (an interrupted download or copy?)"
      ),
      "empty.safetensors": (
          "not a readable safetensors file (Error while deserializing header: header too"
          " small); the file is empty"
      ),
      "text.safetensors": (
          "not a readable safetensors file (Error while deserializing header: header too large)"
      ),
      "torch.safetensors": (
          "not a readable safetensors file (Error while deserializing header: header too"
          " large); it looks like a PyTorch checkpoint: name it *.ckpt (or .pt / .bin)"
      ),
      "safetensors.ckpt": (
          "not a readable PyTorch checkpoint (UnpicklingError: Weights only load failed); it is"
          " a safetensors file: name it *.safetensors"
      ),
      "pickled.ckpt": (
          "not a readable PyTorch checkpoint (UnpicklingError: Weights only load failed); the"
          " file holds pickled code (posix.system), which is refused: weights are only read as"
          " plain tensors. Get the weights as .safetensors, or from a source you trust"
      ),
      "truncated.ckpt": (
          "not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader failed reading"
          " zip archive: failed finding central directory); the file may be truncated (an"
          " interrupted download or copy?)"
      ),
  }
  for name, message in expected.items():
    with pytest.raises(cli.UserError) as info:
      official.read_state_dict(tmp_path / name)
    assert str(info.value) == f"{tmp_path / name}: {message}", name
  # Through the loader (the error names the file, not a raw SafetensorError), and no file.
  with pytest.raises(cli.UserError, match="truncated.safetensors: not a readable"):
    official.load_official("odvae", tmp_path / "truncated.safetensors", directory)
  with pytest.raises(FileNotFoundError, match="no weights file at .*none.safetensors"):
    official.read_state_dict(tmp_path / "none.safetensors")
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(cli.UserError, match=r"config.json: not a JSON file \(Expecting"):
    official.read_official_config(tmp_path, "odvae")


# ----------------------------------------------------------------------------------------------
# Parameter counts: the converter's models vs an independent count of the official modules.


def _conv(cin, cout, taps):
  return cout * cin * taps + cout


def _norm(c):
  return 2 * c


def _res(cin, cout, taps1, taps2):
  shortcut = _conv(cin, cout, 1) if cin != cout else 0
  return _norm(cin) + _conv(cin, cout, taps1) + _norm(cout) + _conv(cout, cout, taps2) + shortcut


def _attn(c):  # norm + q, k, v, proj_out (1x1 convs)
  return _norm(c) + 4 * _conv(c, c, 1)


def official_cvvae_params(k) -> int:
  """CV-VAE's `CVVAEModel` (half_3d ResnetBlock3D: conv1 3x3x3, conv2 3x3), from the README."""
  widths = [k["ch"] * m for m in k["ch_mult"]]
  z, n = k["z_channels"], k["num_res_blocks"]
  count, w = _conv(k["in_channels"], k["ch"], 27), k["ch"]
  for i, c in enumerate(widths):
    for _ in range(n):
      count, w = count + _res(w, c, 27, 9), c
    if i < len(widths) - 1:
      count += _conv(c, c, 27)  # Downsample3D
  count += 2 * _res(w, w, 27, 9) + _attn(w) + _norm(w) + _conv(w, 2 * z, 27)
  w = widths[-1]
  count += _conv(z, w, 27) + 2 * _res(w, w, 27, 9) + _attn(w)
  count += _norm(w) + 4 * _conv(w, w, 1)  # norm_t + q_t, k_t, v_t, proj_out_t (Linear)
  for i in reversed(range(len(widths))):
    for _ in range(n + 1):
      count, w = count + _res(w, widths[i], 27, 9), widths[i]
    if i:
      count += _conv(w, (2 if i % 2 else 1) * w, 27)  # Upsample3D: n*C outputs
  return count + _norm(w) + _conv(w, k["out_ch"], 27)


def official_odvae_params(k) -> int:
  """OSP v1.2 `CausalVAEModel`, from the README."""
  widths = [k["hidden_size"] * m for m in k["hidden_size_mult"]]
  z, e, n = k["z_channels"], k["embed_dim"], k["num_res_blocks"]
  taps = {
      "ResnetBlock2D": 9,
      "ResnetBlock3D": 27,
      "Conv2d": 9,
      "CausalConv3d": 27,
      "Downsample": 9,
      "Spatial2xTime2x3DDownsample": 27,
      "SpatialUpsample2x": 9,
      "Spatial2xTime2x3DUpsample": 27,
  }
  count, w = _conv(3, k["hidden_size"], taps[k["encoder_conv_in"]]), k["hidden_size"]
  for i, c in enumerate(widths):
    t = taps[k["encoder_resnet_blocks"][i]]
    for _ in range(n):
      count, w = count + _res(w, c, t, t), c
    if k["encoder_spatial_downsample"][i]:
      count += _conv(c, c, taps[k["encoder_spatial_downsample"][i]])
  count += 2 * _res(w, w, 27, 27) + _attn(w) + _norm(w) + _conv(w, 2 * z, 27)
  count += _conv(2 * z, 2 * e, 1) + _conv(e, z, 1)  # quant_conv, post_quant_conv
  w = widths[-1]
  count += _conv(z, w, 27) + 2 * _res(w, w, 27, 27) + _attn(w)
  for i in reversed(range(len(widths))):
    t = taps[k["decoder_resnet_blocks"][i]]
    for _ in range(n + 1):
      count, w = count + _res(w, widths[i], t, t), widths[i]
    if k["decoder_spatial_upsample"][i]:
      count += _conv(w, w, taps[k["decoder_spatial_upsample"][i]])
  return count + _norm(w) + _conv(w, 3, 27)


OFFICIAL_COUNTS = {"cvvae": official_cvvae_params, "odvae": official_odvae_params}


def _abstract_params(config):
  model = nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(config, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return sum(leaf.size for leaf in leaves), len(leaves)


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_counts(kind, fixture):
  _, config, _ = fixture[kind]
  build = {"cvvae": architectures.cvvae, "odvae": architectures.odvae}[kind]
  # The fixture model: exactly config.json's count, and the independent formula agrees.
  count, tensors = _abstract_params(build(config["constructor_kwargs"]))
  assert count == config["num_parameters"] == {"cvvae": 2_307_147, "odvae": 2_887_687}[kind]
  assert tensors == config["num_tensors"]
  assert OFFICIAL_COUNTS[kind](config["constructor_kwargs"]) == count
  # The released model (built abstractly, no weights): the same formula.
  released = official.read_official_config(config["released_config"])
  count, _ = _abstract_params(build(released))
  assert count == OFFICIAL_COUNTS[kind](released)
  assert count == {"cvvae": 182_446_475, "odvae": 239_189_991}[kind]


class _Pickled:
  """Unpickling it would run a command: what `weights_only=True` refuses."""

  def __reduce__(self):
    return (os.system, ("true",))
