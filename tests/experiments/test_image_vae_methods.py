"""The image-VAE-methods experiment's configs validate and describe what it states (no
training here: the experiment itself is run by hand, see results/inflation.md)."""

import pytest

from bootvae_jax.experiments import image_vae_methods as ivm
from bootvae_jax.models import image_vae
from bootvae_jax.training import config as config_lib


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ivm")
  for name in ("train", "eval"):
    (root / name).mkdir()
  return str(root / "train"), str(root / "eval"), str(root)


def test_image_vae_config_is_an_sd_layout_image_vae(dirs):
  config = ivm.image_vae_config(100, dirs)
  config_lib.validate(config)
  assert image_vae.image_config_problems(config.model) == []
  assert config.total_steps == 100 and config.data.num_frames == ivm.NUM_FRAMES


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
@pytest.mark.parametrize("init", ivm.INIT_MODES)
def test_video_configs(dirs, variant, init):
  config = ivm.video_config(variant, init, variant == 4 and init == "tail", 24, dirs, "/img")
  config_lib.validate(config)
  assert config.total_steps == 24 and config.eval.at_start
  assert config.compat.image_vae == "/img"  # compatibility is evaluated in every run
  assert (config.compat.decoder_weight > 0) == (variant == 4 and init == "tail")
  assert config.init_checkpoint.inflate == ("" if init == "random" else init)
  # OD-VAE's 128·(1, 2, 4, 4) at 1/16 width, as the image VAE it is initialised from.
  assert (config.model.base_channels, tuple(config.model.channel_multipliers)) == (8, (1, 2, 4, 4))
  image = ivm.image_vae_config(1, dirs).model
  assert (image.base_channels, tuple(image.channel_multipliers)) == (8, (1, 2, 4, 4))
