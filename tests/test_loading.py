"""`loading.load`: every kind of model path, found from its files, and a clear error otherwise."""

import json
import shutil

import numpy as np
import pytest
from absl import flags
from flax import nnx

import bootvae_jax
from bootvae_jax import cli
from bootvae_jax import loading
from bootvae_jax import models
from bootvae_jax.interop import official
from bootvae_jax.models import architectures
from bootvae_jax.models import image_vae
from bootvae_jax.training import checkpoints
from bootvae_jax.training.config import default_config


def _params(model) -> dict[str, np.ndarray]:
  return {
      loading.path_string(p): np.asarray(v[...])
      for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


def _assert_same_params(a, b):
  pa, pb = _params(a), _params(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir holding a tiny model at step 3 whose EMA differs, the model, its EMA)."""
  model_config = architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, num_groups=4
  )
  model = models.build_model(model_config, seed=0)
  ema = models.build_model(model_config, seed=1)
  path = tmp_path_factory.mktemp("run")
  config = default_config()
  config.model = model_config
  ckpts = checkpoints.Checkpoints(str(path), async_save=False)
  ckpts.save(
      3,
      dict(
          step=np.int32(3),
          params=nnx.state(model, nnx.Param),
          frozen={},
          ema_params=nnx.state(ema, nnx.Param),
      ),
      config=config,
  )
  ckpts.close()
  return path, model, ema


def test_a_workdir(run):
  path, model, ema = run
  assert loading.kind_of(path) == "workdir"
  loaded = loading.load(path)
  assert loaded.source == dict(workdir=str(path), step=3, ema=False)
  assert loaded.config.model.to_dict() == loaded.model_config.to_dict()
  _assert_same_params(loaded.model, model)
  _assert_same_params(loading.load(path, ema=True, kind="workdir").model, ema)
  _assert_same_params(bootvae_jax.load_model(path)[0], model)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 2 .*available: \[3\]"):
    loading.load(path, step=2)


def test_an_exported_folder_in_either_format(run, tmp_path):
  _, model, _ = run
  out = bootvae_jax.export(model, model.config, tmp_path / "export")
  assert loading.kind_of(out) == "exported"
  loaded = loading.load(out)
  assert loaded.source == dict(exported=str(out))
  _assert_same_params(loaded.model, model)


def test_an_official_export_is_released_weights(fixtures_dir, tmp_path):
  directory = fixtures_dir / "odvae"
  reference = official.load_official(
      "odvae", directory / "weights.safetensors", directory / "config.json"
  )
  out = bootvae_jax.export(reference, reference.config, tmp_path / "odvae", format="official")
  assert loading.kind_of(out) == "odvae"  # its config.json names the kind
  _assert_same_params(loading.load(out).model, reference)
  _assert_same_params(loading.load(out, kind="exported").model, reference)


@pytest.mark.parametrize("kind", ["odvae", "cvvae"])
def test_released_weights(fixtures_dir, tmp_path, kind):
  directory = fixtures_dir / kind
  reference = official.load_official(
      kind, directory / "weights.safetensors", directory / "config.json"
  )
  # A folder, or its weights file (the config beside it says which model).
  assert loading.kind_of(directory) == loading.kind_of(directory / "weights.safetensors") == kind
  loaded = loading.load(directory)
  assert loaded.source == dict(official=kind, weights=str(directory / "weights.safetensors"))
  _assert_same_params(loaded.model, reference)
  # Weights on their own, config named: the command lines' --weights / --model_config.
  shutil.copy(directory / "weights.safetensors", tmp_path / "w.safetensors")
  with pytest.raises(cli.UserError, match="does not say of which released model"):
    loading.load(tmp_path / "w.safetensors")
  loaded = loading.load(
      tmp_path / "w.safetensors", config_path=directory / "config.json", kind=kind
  )
  _assert_same_params(loaded.model, reference)
  with pytest.raises(cli.UserError, match="--step and --ema apply to a --workdir only"):
    loading.load(directory, ema=True)


def test_a_diffusers_folder(tmp_path):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(
      block_out_channels=(8, 16),
      layers_per_block=1,
      latent_channels=4,
      norm_num_groups=4,
      down_block_types=("DownEncoderBlock2D",) * 2,
      up_block_types=("UpDecoderBlock2D",) * 2,
      sample_size=16,
  )
  vae.save_pretrained(tmp_path)
  assert loading.kind_of(tmp_path) == "diffusers"
  loaded = loading.load(tmp_path)
  assert isinstance(loaded.model, image_vae.ImageVAE)
  assert loaded.source == dict(diffusers=str(tmp_path))
  expected = vae.decoder.conv_in.weight.detach().numpy()
  np.testing.assert_array_equal(
      np.asarray(loaded.model.decoder.conv_in.kernel[...])[0],
      np.transpose(expected, (2, 3, 1, 0)),
  )
  _assert_same_params(loading.load_image_vae(tmp_path), loaded.model)


def test_a_path_that_is_none_of_them(tmp_path, run):
  with pytest.raises(cli.UserError, match=r"missing does not exist; a model path is a training"):
    loading.load(tmp_path / "missing")
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(
      cli.UserError, match=r"is none of the model kinds; a model path is a training"
  ):
    loading.load(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(dict(anything=1)))
  with pytest.raises(cli.UserError, match="is none of the model kinds"):
    loading.load(tmp_path)
  with pytest.raises(cli.UserError, match=r"kind='sdvae'; use one of"):
    loading.load(tmp_path, kind="sdvae")
  with pytest.raises(ValueError, match="is not an image VAE"):
    loading.load_image_vae(run[0])  # a video model's workdir
  with pytest.raises(cli.UserError, match="holds exported weights, not an image VAE"):
    loading.load_image_vae(bootvae_jax.export(run[1], run[1].config, tmp_path / "export"))


def _flags(*argv):
  values = flags.FlagValues()
  loading.define_model_flags(values)
  values(["prog", *argv])
  return values


def test_the_command_line_flags(run, fixtures_dir, capsys):
  path, model, _ = run
  with pytest.raises(cli.UserError, match="give either --workdir .* or --official"):
    loading.load_from_flags(_flags())
  with pytest.raises(cli.UserError, match="--official=odvae needs --weights and --model_config"):
    loading.load_from_flags(_flags("--official=odvae"))
  loaded = loading.load_from_flags(_flags(f"--workdir={path}", "--step=3"))
  assert loaded.source == dict(workdir=str(path), step=3, ema=False)
  _assert_same_params(loaded.model, model)
  directory = fixtures_dir / "odvae"
  weights = f"--weights={directory / 'weights.safetensors'}"
  new = loading.load_from_flags(
      _flags("--official=odvae", weights, f"--model_config={directory / 'config.json'}")
  )
  assert capsys.readouterr().err == ""
  old = loading.load_from_flags(
      _flags("--official=odvae", weights, f"--official_config={directory / 'config.json'}")
  )
  assert "--official_config is deprecated; use --model_config" in capsys.readouterr().err
  assert new.source == old.source == dict(official="odvae", weights=str(weights[10:]))
  _assert_same_params(new.model, old.model)


def test_a_workdir_whose_newest_checkpoint_is_damaged(run, tmp_path, caplog):
  path, model, _ = run
  copy = tmp_path / "run"
  shutil.copytree(path, copy)
  shutil.copytree(copy / "checkpoints" / "3", copy / "checkpoints" / "5")
  metadata = copy / "checkpoints" / "5" / "state" / "_METADATA"
  metadata.write_bytes(metadata.read_bytes()[:20])
  loaded, _ = bootvae_jax.load_model(copy)
  _assert_same_params(loaded, model)  # step 3's
  damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert damaged == [
      f"checkpoint {copy}/checkpoints/5 is damaged (the state's metadata (_METADATA,"
      " manifest.ocdbt) does not read); trying the one before it"
  ]
  assert loading.load(copy).source["step"] == 3
  with pytest.raises(loading.DamagedCheckpointError, match=r"checkpoints/5 is damaged \(the"):
    bootvae_jax.load_model(copy, step=5)
  (copy / "checkpoints" / "3" / "commit_success.txt").unlink()
  with pytest.raises(
      cli.UserError, match=r"no intact checkpoint in .*step 5: the state's .*; step 3: no commit"
  ):
    bootvae_jax.load_model(copy)
