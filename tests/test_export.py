"""`python -m bootvae_jax.export`: a training workdir to a PyTorch folder, in a fresh process."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from bootvae_jax import models
from bootvae_jax.interop import torch_model
from bootvae_jax.training import checkpoints
from bootvae_jax.training.config import default_config

import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir holding a tiny model at step 3 with different EMA weights, the model, its EMA)."""
  model_config = tiny.tiny_model_config(attention=True)
  model = models.build_model(model_config, seed=0)
  ema = models.build_model(model_config, seed=1)
  path = tmp_path_factory.mktemp("run")
  config = default_config()
  config.model = model_config
  ckpts = checkpoints.Checkpoints(str(path))
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
  ckpts.wait()
  ckpts.close()
  return str(path), model, ema


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = str(REPO)
  return subprocess.run(
      [sys.executable, "-m", "bootvae_jax.export", *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def _decode_first_latent(vae) -> np.ndarray:
  z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 2, 2, 2)).astype(np.float32))
  with torch.no_grad():
    return vae.decode(z).numpy()


def test_cli_exports_the_ema_weights_of_a_run(run, tmp_path):
  workdir, model, ema = run
  result = _cli(f"--workdir={workdir}", f"--out={tmp_path}", "--ema")
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["files"] == ["README.md", "config.json", "model.safetensors"]
  assert (summary["step"], summary["ema"], summary["format"]) == (3, True, "bootvae_jax")
  assert "in sys.modules" not in result.stderr  # no runpy double-import warning
  assert "_CHECKPOINT_METADATA" not in result.stderr  # orbax's notice about the meta item
  card = (tmp_path / "README.md").read_text()
  assert "4x temporal, 8x spatial" in card and '"step": 3' in card and '"ema": true' in card
  # The EMA weights, not the raw ones: the exported decoder equals the EMA model's.
  vae = torch_model.load_exported(tmp_path)
  z = np.transpose(np.random.default_rng(0).standard_normal((1, 4, 2, 2, 2)), (0, 2, 3, 4, 1))
  expected = np.transpose(np.asarray(ema.decode(z.astype(np.float32))), (0, 4, 1, 2, 3))
  raw = np.transpose(np.asarray(model.decode(z.astype(np.float32))), (0, 4, 1, 2, 3))
  got = _decode_first_latent(vae)
  assert np.max(np.abs(got - expected)) <= 1e-4
  assert np.max(np.abs(got - raw)) > 1e-2


def test_cli_errors_are_one_line(run, tmp_path):
  workdir, _, _ = run
  result = _cli(f"--workdir={workdir}", f"--out={tmp_path}", "--format=official")
  assert result.returncode == 2, result.stderr[-3000:]  # a user error (bootvae_jax/cli.py)
  (line,) = result.stderr.strip().splitlines()  # exactly one line
  assert line.startswith(
      "error: model config 'promag_base_z4' is neither the CV-VAE nor the OD-VAE layout"
  )
  result = _cli(f"--workdir={tmp_path / 'nothing'}", f"--out={tmp_path}")
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith("error: no checkpoint under")


def test_a_damaged_newest_checkpoint_falls_back_and_a_damaged_step_is_refused(run, tmp_path):
  """As training does: the newest intact checkpoint, with one warning line naming the damaged
  one; `--step` naming the damaged one is an error saying why."""
  workdir, _, _ = run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  shutil.copytree(copy / "checkpoints" / "3", copy / "checkpoints" / "4")
  manifest = copy / "checkpoints" / "4" / "state" / "manifest.ocdbt"
  with open(manifest, "r+b") as f:
    f.truncate(manifest.stat().st_size // 2)
  result = _cli(f"--workdir={copy}", f"--out={tmp_path / 'out'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 3
  damaged = [l for l in result.stderr.splitlines() if "is damaged" in l]
  assert len(damaged) == 1 and f"{copy}/checkpoints/4 is damaged" in damaged[0], result.stderr
  assert "trying the one before it" in damaged[0] and "Traceback" not in result.stderr
  assert (copy / "checkpoints" / "4").is_dir()  # reading never renames a run's files

  result = _cli(f"--workdir={copy}", "--step=4", f"--out={tmp_path / 'out4'}")
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith(f"error: checkpoint {copy}/checkpoints/4 is damaged (the state's metadata")


def test_export_to_a_url_goes_through_epath_and_files_follow_the_umask(
    run, fake_gcs, tmp_path, monkeypatch
):
  from bootvae_jax.interop import exported  # pylint: disable=g-import-not-at-top

  _, model, _ = run
  model_config = tiny.tiny_model_config(attention=True)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  out = exported.export(model, model_config, "gs://bucket/exported")
  assert os.fspath(out) == "gs://bucket/exported"
  remote = fake_gcs.root / "bucket" / "exported"
  assert sorted(p.name for p in remote.iterdir()) == [
      "README.md",
      "config.json",
      "model.safetensors",
  ]
  assert "gs://bucket/exported/model.safetensors" in fake_gcs.seen
  assert not list(tmp_path.rglob("gs:*"))  # no ./gs:/bucket/exported

  old = os.umask(0o022)
  try:
    local = exported.export(model, model_config, tmp_path / "local")
  finally:
    os.umask(old)
  modes = {p.name: p.stat().st_mode & 0o777 for p in local.iterdir()}
  assert modes == {"README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}
