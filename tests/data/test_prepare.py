"""Preparing a video corpus into clip shards: skips, exact frames, resume, URLs, the CLI."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

from array_record.python import array_record_module
import numpy as np
import pytest

from bootvae_jax.data import prepare
from bootvae_jax.data import sources
from bootvae_jax.data import transforms

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


def read_records(folder) -> list[np.ndarray]:
  """Every clip of a prepared folder, in index (record) order."""
  index = json.loads((pathlib.Path(folder) / "index.json").read_text())
  clips = []
  for shard in index["shards"]:
    reader = array_record_module.ArrayRecordReader(str(pathlib.Path(folder) / shard["file"]))
    assert reader.num_records() == shard["num_clips"]
    clips.extend(sources.decode_clip(record) for record in reader.read_all())
    reader.close()
  return clips


def folder_state(folder) -> dict[str, int]:
  return {path.name: path.stat().st_mtime_ns for path in pathlib.Path(folder).iterdir()}


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, bad_video_dir) -> pathlib.Path:
  """bad_video_dir (2 good videos, 5 bad files) plus a text file named .mp4, nested."""
  folder = tmp_path_factory.mktemp("mixed") / "videos"
  shutil.copytree(bad_video_dir, folder / "nested")
  (folder / "text.mp4").write_text("a text file, renamed\n" * 10)
  return folder


def test_bad_files_are_skipped_and_reported(mixed_dir, bad_files, tmp_path):
  options = prepare.ClipOptions(num_frames=9, size=32)
  index = prepare.prepare(str(mixed_dir), str(tmp_path), options, shards=3, progress_every=0)
  # good.mp4: 120 frames -> 13 windows of 9; good.mkv: 40 frames -> 4.
  assert index["num_clips"] == 17 and index["clip_shapes"] == {"9x32x32x3": 17}
  assert sorted(index["videos"]) == ["nested/good.mkv", "nested/good.mp4"]
  report = json.loads((tmp_path / "report.json").read_text())
  assert (report["num_files"], report["num_videos"], report["num_skipped"]) == (8, 2, 6)
  reasons = {entry["file"]: entry["reason"] for entry in report["skipped"]}
  expected = {f"nested/{name}": word for name, word in bad_files.items()}
  expected["text.mp4"] = "not a readable video"
  assert sorted(reasons) == sorted(expected)
  for name, word in expected.items():
    assert word in reasons[name], (name, reasons[name])
  assert "needs 9" in reasons["nested/short.mp4"]
  assert len(read_records(tmp_path)) == 17
  assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


@pytest.mark.parametrize("center_crop", [True, False])
def test_records_equal_a_direct_decode_of_the_same_frames(center_crop, video_dir, tmp_path):
  options = prepare.ClipOptions(
      num_frames=5, size=32, frame_stride=2, clips_per_video=3, center_crop=center_crop
  )
  index = prepare.prepare(str(video_dir), str(tmp_path), options, shards=2, progress_every=0)
  # 3 spread windows of 9 frames from each of the 5 videos (all at least 20 frames long).
  assert index["num_clips"] == 15
  spec = options.clip_spec()
  records = read_records(tmp_path)
  for record, (video_id, start, height, width) in zip(records, index["clips"]):
    video = sources.probe_video(str(video_dir / index["videos"][video_id]))
    size = transforms.resized_size(video.height, video.width, spec)
    assert min(size) == 32
    frames = sources.decode_frames(video, start + 2 * np.arange(5), size)
    expected = transforms.crop_and_flip(frames, spec, None) if center_crop else frames
    np.testing.assert_array_equal(record, expected)
    assert record.shape == (5, height, width, 3)
  starts = [
      start
      for video_id, start, _, _ in index["clips"]
      if index["videos"][video_id] == "carphone.mp4"
  ]
  assert starts == [18, 56, 92]  # positions 1/6, 1/2, 5/6 of starts 0..111, rounded to even


def test_clip_windows():
  options = prepare.ClipOptions(num_frames=5, size=32, frame_stride=2)
  assert prepare.clip_starts(30, options) == [0, 9, 18]
  assert prepare.clip_starts(8, options) == []
  assert prepare.clip_starts(9, options) == [0]
  spread = prepare.ClipOptions(num_frames=5, size=32, clips_per_video=4)
  assert prepare.clip_starts(7, spread) == [0, 1, 2]  # fewer distinct windows than asked


def test_rerun_adds_nothing_and_an_interrupted_run_resumes(video_dir, tmp_path, monkeypatch):
  options = prepare.ClipOptions(num_frames=9, size=32)
  first = prepare.prepare(str(video_dir), str(tmp_path), options, shards=3, progress_every=0)
  records = read_records(tmp_path)
  before = folder_state(tmp_path)

  probed = []
  real_probe = sources.probe_video
  monkeypatch.setattr(sources, "probe_video", lambda path: probed.append(path) or real_probe(path))
  again = prepare.prepare(str(video_dir), str(tmp_path), options, shards=3, progress_every=0)
  assert probed == []
  assert again == first
  unchanged = {
      n: t
      for n, t in folder_state(tmp_path).items()
      if not n.endswith(("index.json", "report.json"))
  }
  assert unchanged == {n: t for n, t in before.items() if n in unchanged} and len(unchanged) == 7

  # An interrupted run: shard 1 never finished (no sidecar; a half-written staging file).
  plan = json.loads((tmp_path / "plan.json").read_text())
  (tmp_path / "clips-00001-of-00003.json").unlink()
  (tmp_path / "clips-00001-of-00003.array_record").unlink()
  (tmp_path / "clips-00001-of-00003.array_record.tmp-dead").write_bytes(b"partial")
  (tmp_path / "index.json").unlink()
  resumed = prepare.prepare(str(video_dir), str(tmp_path), options, progress_every=0)
  assert sorted(probed) == sorted(str(video_dir / name) for name in plan["shards"][1])
  assert resumed == first
  assert not (tmp_path / "clips-00001-of-00003.array_record.tmp-dead").exists()
  for got, expected in zip(read_records(tmp_path), records):
    np.testing.assert_array_equal(got, expected)

  with pytest.raises(ValueError, match="other options"):
    prepare.prepare(str(video_dir), str(tmp_path), prepare.ClipOptions(num_frames=9, size=48))


def test_output_may_be_a_url(video_dir, fake_gcs, tmp_path):
  staging = tmp_path / "staging"
  staging.mkdir()
  options = prepare.ClipOptions(num_frames=9, size=32)
  index = prepare.prepare(
      str(video_dir),
      "gs://bucket/clips",
      options,
      shards=2,
      progress_every=0,
      staging_dir=str(staging),
  )
  written = fake_gcs.root / "bucket" / "clips"
  assert index["num_clips"] == 24
  assert sorted(p.name for p in written.iterdir()) == sorted(
      [f"clips-0000{s}-of-00002.{ext}" for s in range(2) for ext in ("array_record", "json")]
      + ["index.json", "plan.json", "report.json"]
  )
  assert "gs://bucket/clips/index.json" in fake_gcs.seen
  assert not [p for p in fake_gcs.seen if "gs:/" in p and not p.startswith("gs://")]
  assert os.listdir(staging) == []  # nothing left behind
  assert len(read_records(written)) == 24


def run_cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "bootvae_jax.data.prepare", *args],
      capture_output=True,
      text=True,
      cwd=REPOSITORY,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      timeout=600,
  )


def test_command_line_with_worker_processes(video_dir, tmp_path):
  out = tmp_path / "clips"
  result = run_cli(
      f"--input={video_dir}/**/*.m*",  # a glob: carphone.mp4, bikes.mkv, bikes.mov
      f"--out={out}",
      "--num_frames=9",
      "--size=32",
      "--workers=2",
      "--progress_every=0.2",
  )
  assert result.returncode == 0, result.stderr
  assert "prepared 19 clips of 9x32x32x3 from 3 videos in 3 shards" in result.stdout
  assert "prepare: 3/3 videos, 19 clips" in result.stdout
  index = json.loads((out / "index.json").read_text())
  assert sorted(index["videos"]) == ["carphone.mp4", "sub/bikes.mkv", "sub/bikes.mov"]

  result = run_cli(f"--input={tmp_path}/nothing", f"--out={tmp_path}/other", "--workers=1")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --input: no video file in the glob '{tmp_path}/nothing'"
  )
