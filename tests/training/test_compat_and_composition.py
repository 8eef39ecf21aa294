"""The seed papers' training methods through the trainer, at tiny scale: an image VAE trained on
frames (configs/image_vae_tiny.py), CV-VAE's regulariser (configs/cvvae_tiny.py), and the
composition (configs/compose_4x.py → compose_8x.py: tail-initialised OD-VAE-layout base,
CV-VAE regulariser, grown to 8x with ProMAG mixing)."""

import importlib
import json
import os

import numpy as np
import pytest

from bootvae_jax import models
from bootvae_jax.models import architectures
from bootvae_jax.models import image_vae
from bootvae_jax.models import init as init_lib
from bootvae_jax import loading
from bootvae_jax.core import sharding
from bootvae_jax.training import stages
from bootvae_jax.training import train_state as train_state_lib
from bootvae_jax.training import trainer

from bootvae_jax.configs import image_vae_tiny

SCALING_FACTOR = 0.5  # distinct from every default, to see it travel


def _tiny(config, steps, num_frames=9):
  config.total_steps = steps
  config.log_every = 1
  config.eval_every = config.checkpoint_every = steps
  config.progress_every_seconds = 1000.0
  config.data.update(
      source="synthetic",
      num_frames=num_frames,
      crop_size=(16, 16),
      batch_size=4,
      synthetic_num_clips=4,
      resize_short_side=0,
      frame_stride=1,
      num_workers=0,
  )
  config.loss.update(perceptual_weight=0.0, gan_weight=0.0)
  config.eval.num_clips = 1
  config.mesh.update(data=4, fsdp=1)  # data parallel: see tests/training/conftest.py
  return config


def _config(name, steps, **kw):
  return _tiny(importlib.import_module(f"bootvae_jax.configs.{name}").get_config(), steps, **kw)


def _odvae_tiny():
  """OD-VAE variant 4 at image_vae_tiny's widths (the layout tail inflation needs)."""
  widths = image_vae_tiny.WIDTHS
  config = architectures.odvae_variant(
      4, hidden_size=widths[0], num_res_blocks=1, hidden_size_mult=[w // widths[0] for w in widths]
  )
  config.num_groups = image_vae_tiny.NUM_GROUPS
  return config


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _meta(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory):
  """configs/image_vae_tiny.py trained for 2 steps on 1-frame clips."""
  workdir = str(tmp_path_factory.mktemp("image_vae"))
  config = _config("image_vae_tiny", 2, num_frames=1)
  config.model.scaling_factor = SCALING_FACTOR
  trainer.train_and_evaluate(config, workdir)
  return workdir


def test_image_vae_workdir_loads_as_image_vae(image_workdir):
  model = loading.load_image_vae(image_workdir)
  assert isinstance(model, image_vae.ImageVAE)
  assert model.config.scaling_factor == SCALING_FACTOR
  assert model.latent_channels == image_vae_tiny.LATENT_CHANNELS
  trained = loading.load_params(image_workdir)
  np.testing.assert_array_equal(
      model.encoder.conv_in.kernel[...], trained["encoder/conv_in/kernel"]
  )


def test_cvvae_configs_carry_the_regulariser():
  """configs/cvvae.py: the released recipe's regulariser; cvvae_tiny.py: the same on the tiny
  image VAE's latent (trained with it by hand: `python -m bootvae_jax.main
  --config=configs/cvvae_tiny.py`; the composition test below trains the same regulariser)."""
  from bootvae_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top

  full = importlib.import_module("configs.cvvae").get_config()
  assert (full.compat.decoder_weight, full.compat.mapping, full.compat.learned_logvar) == (
      1.0,
      "random",
      True,
  )
  tiny = _config("cvvae_tiny", 2)
  assert tiny.compat.to_dict() == dict(full.compat.to_dict(), image_vae=image_vae_tiny.WORKDIR)
  assert tiny.model.latent_channels == image_vae_tiny.LATENT_CHANNELS
  assert models.compression_factors(tiny.model) == (4, 8)
  config_lib.validate(tiny)


def test_composition_runs_through_the_spine(image_workdir, tmp_path):
  base_dir, grown_dir = str(tmp_path / "compose_4x"), str(tmp_path / "compose_8x")
  config = _config("compose_4x", 3)
  config.model = _odvae_tiny()
  config.init_checkpoint.path = config.compat.image_vae = image_workdir
  assert config.init_checkpoint.inflate == "tail" and config.compat.decoder_weight > 0

  # Before training: the model holds the tail-inflated image VAE.
  mesh = sharding.make_mesh(config.mesh)
  setup, state = train_state_lib.create_train_state(config, mesh)
  state = stages.init_from_checkpoint(state, setup, config.init_checkpoint)
  expected = init_lib.flat_params(
      models.inflate(loading.load_image_vae(image_workdir), config.model, "tail")
  )
  got = {train_state_lib.path_string(p): np.asarray(v) for p, v in state.params.flat_state()}
  assert sorted(got) == sorted(expected)
  for key in ("encoder/down/2/block/0/conv1/kernel", "decoder/up/3/upsample/conv/kernel"):
    np.testing.assert_array_equal(got[key], expected[key])
    assert not got[key][:-1].any()  # tail: zeros before the last temporal slice

  trainer.train_and_evaluate(config, base_dir)
  train = [r for r in _jsonl(base_dir) if "loss" in r]
  assert len(train) == 3 and all(r["compat_decoder"] > 0 for r in train)
  # configs/cvvae.py's learnable log-variance moves (gradient 1 - L/e^s > 0 for L1 below 1;
  # the first step's learning rate is 0 in the warm-up).
  assert train[0]["compat_logvar"] == 0.0 and train[-1]["compat_logvar"] < 0.0
  # The image VAE's scaling factor is the model's, in the run's config (stored in the
  # checkpoint) and in the checkpoint metadata.
  assert loading.read_config(base_dir).model.scaling_factor == SCALING_FACTOR
  assert _meta(base_dir, 3)["scaling_factor"] == SCALING_FACTOR

  grown = _config("compose_8x", 2)
  grown.model = _odvae_tiny()
  grown.model.growth = models.autoencoder.default_model_config().growth
  grown.model.growth.update(levels=1, mixing="both")  # as compose_8x.py grows compose_4x.py
  grown.init_checkpoint.path = base_dir
  grown.compat.image_vae = image_workdir
  assert grown.init_checkpoint.inflate == "" and grown.freeze
  state = trainer.train_and_evaluate(grown, grown_dir)
  assert models.compression_factors(grown.model) == (8, 8)
  rows = _jsonl(grown_dir)
  assert all(r["compat_decoder"] > 0 for r in rows if "loss" in r)
  assert "eval/compat_psnr" in rows[-1]
  # The trained, frozen base is the lower level of the 8x model, unchanged.
  base = loading.load_params(base_dir)
  lower = {train_state_lib.path_string(p): np.asarray(v) for p, v in state.frozen.flat_state()}
  key = "encoder/lower/down/2/block/0/conv1/kernel"
  np.testing.assert_array_equal(lower[key], base["encoder/down/2/block/0/conv1/kernel"])
