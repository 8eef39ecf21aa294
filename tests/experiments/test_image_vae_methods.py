"""The image-VAE-methods experiment's configs validate and describe what it states (no
training here: the experiment itself is run by hand, see results/inflation.md)."""

import json
import os

import pytest

from bootvae_jax.experiments import image_vae_methods as ivm
from bootvae_jax.models import image_vae
from bootvae_jax.training import config as config_lib
from bootvae_jax.training import runs


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


def test_a_video_run_is_trained_once_and_summarised_from_its_logged_evaluation(dirs, monkeypatch):
  trained = []

  def train_or_reuse(config, run_dir):
    trained.append(run_dir)
    return runs.RunTiming(wall_s=12.0, steps=config.total_steps, finished=True, reached=24)

  monkeypatch.setattr(runs, "train_or_reuse", train_or_reuse)
  video_runs = ivm.VideoRuns(24, dirs, "/img")
  run_dir = video_runs.run_dir("odvae_v4_tail")
  assert run_dir == os.path.join(dirs[2], "odvae_v4_tail")
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for row in (
        {"step": 0, "eval/psnr": 20.0, "eval/ssim": 0.5, "eval/compat_psnr": 15.0},
        {"step": 12, "loss": 0.3},
        {"step": 24, "eval/psnr": 25.12345, "eval/ssim": 0.8, "eval/compat_psnr": 18.0},
    ):
      f.write(json.dumps(row) + "\n")
  row = video_runs.row(4, "tail")
  assert row == dict(
      run="odvae_v4_tail",
      variant=4,
      init="tail",
      regularised=False,
      steps=24,
      wall_s=12.0,
      psnr=25.123,
      ssim=0.8,
      compat_psnr=18.0,
      psnr_at_init=20.0,
      compat_psnr_at_init=15.0,
      curve=[[0, 20.0], [24, 25.123]],
      compat_curve=[[0, 15.0], [24, 18.0]],
  )
  row["parameters"] = 1  # the caller's copy
  assert "parameters" not in video_runs.row(4, "tail") and trained == [run_dir]
  assert video_runs.configs["odvae_v4_tail"].init_checkpoint.inflate == "tail"
