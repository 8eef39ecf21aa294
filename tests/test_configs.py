"""Every shipped config (bootvae_jax/configs/*.py) loads, validates and builds its model
abstractly (`nnx.eval_shape`: shapes only, so full-width models cost nothing), the root
`configs/` path keeps working, and the CV-VAE configs carry CV-VAE's regulariser."""

import importlib
import os
import pathlib
import pkgutil
import subprocess
import sys

import pytest
from flax import nnx

import bootvae_jax
from bootvae_jax import configs as configs_package
from bootvae_jax import data as data_lib
from bootvae_jax import models
from bootvae_jax.configs import image_vae_tiny
from bootvae_jax.training import config as config_lib

import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = sorted(m.name for m in pkgutil.iter_modules(configs_package.__path__))
# get_config arguments (`--config=configs/odvae.py:2`).
VARIANTS = {"odvae": ["1", "2", "3", "4"], "odvae_tiny": ["1", "4"]}
CASES = [(name, arg) for name in NAMES for arg in VARIANTS.get(name, [None])]
# Temporal compression where it is not the base's 4x: ProMAG-grown and image models.
EXPECTED_TEMPORAL = {
    "promag_8x": 8,
    "direct_8x": 8,
    "compose_8x": 8,
    "promag_16x": 16,
    "direct_16x": 16,
    "image_vae": 1,
    "image_vae_tiny": 1,
}


def test_every_config_file_is_covered():
  files = {p.stem for p in (ROOT / "bootvae_jax" / "configs").glob("*.py")} - {"__init__"}
  assert files == set(NAMES) and {"promag_4x", "cvvae", "odvae", "demo"} <= files


@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}:{a}" if a else n for n, a in CASES])
def test_config_validates_and_builds_abstractly(name, arg, tmp_path):
  module = importlib.import_module(f"bootvae_jax.configs.{name}")
  config = module.get_config(*([arg] if arg else []))
  if config.data.source in ("video_folder", "image_folder"):
    config.data.path = str(tmp_path)  # as a user passes --config.data.path
  if "model" not in config:  # data_preview_example: a data subtree only
    data_lib.validate(config.data, temporal_factor=1, spatial_factor=1)
    return
  config_lib.validate(config)
  temporal, spatial = models.compression_factors(config.model)
  model = nnx.eval_shape(lambda: bootvae_jax.build_model(config.model))
  assert (model.temporal_factor, model.spatial_factor) == (temporal, spatial)
  assert (config.data.num_frames - 1) % temporal == 0
  assert temporal == EXPECTED_TEMPORAL.get(name, 4)
  grown = config.model.growth.levels > 0
  assert type(model).__name__ == ("GrownAutoencoder" if grown else "VideoAutoencoder")


def test_cvvae_configs_carry_the_regulariser():
  """configs/cvvae.py: the released recipe's regulariser; cvvae_tiny.py: the same on the tiny
  image VAE's latent (trained with it by hand: `python -m bootvae_jax.main
  --config=configs/cvvae_tiny.py`; tests/training/test_stages.py's composition test trains the
  same regulariser)."""
  full = importlib.import_module("configs.cvvae").get_config()
  assert (full.compat.decoder_weight, full.compat.mapping, full.compat.learned_logvar) == (
      1.0,
      "random",
      True,
  )
  small = tiny.shipped_run_config("cvvae_tiny", 2)
  assert small.compat.to_dict() == dict(full.compat.to_dict(), image_vae=image_vae_tiny.WORKDIR)
  assert small.model.latent_channels == image_vae_tiny.LATENT_CHANNELS
  assert models.compression_factors(small.model) == (4, 8)
  config_lib.validate(small)


def test_root_config_paths_load_from_any_directory(tmp_path):
  """`--config=configs/x.py` from the repository root and the package's own file from
  elsewhere load the same config; the configs import each other through the package, so
  only `bootvae_jax` needs to be importable (here: a folder holding a link to it)."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "bootvae_jax").symlink_to(ROOT / "bootvae_jax")
  code = (
      "import sys; from ml_collections import config_flags; from absl import flags;"
      " f = config_flags.DEFINE_config_file('config'); flags.FLAGS(sys.argv);"
      " print(f.value.name, f.value.model.growth.levels)"
  )
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  for config_path, cwd in (
      (ROOT / "configs" / "direct_16x.py", tmp_path),
      (site / "bootvae_jax" / "configs" / "direct_16x.py", tmp_path),
      ("configs/direct_16x.py", ROOT),
  ):
    out = subprocess.run(
        [sys.executable, "-c", code, f"--config={config_path}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["direct_16x", "2"]
