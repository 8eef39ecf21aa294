"""Bad input: skipped with one warning, counted, never a crash; no readable video is an error."""

import logging
import pathlib
import shutil

import numpy as np
import pytest

from bootvae_jax import data
from bootvae_jax.data import pipeline
from bootvae_jax.data import sources
from bootvae_jax.data import transforms


def warnings_about(caplog, name):
  return [
      record
      for record in caplog.records
      if record.levelno == logging.WARNING and name in record.getMessage()
  ]


def test_each_bad_file_is_skipped_with_its_reason_and_one_warning(
    bad_video_dir, bad_files, make_config, mesh, caplog
):
  config = make_config(source="video_folder", path=str(bad_video_dir), resize_short_side=40)
  with caplog.at_level(logging.WARNING):
    batches = data.make_train_batches(config, mesh=mesh, seed=0)
    videos = [np.asarray(next(batches)["video"]) for _ in range(3)]
  assert all(video.shape == (8, 9, 32, 32, 3) for video in videos)
  assert all(np.isfinite(video).all() for video in videos)

  reasons = {pathlib.Path(skipped.file).name: skipped.reason for skipped in batches.skipped_files}
  assert sorted(reasons) == sorted(bad_files)
  for name, expected_words in bad_files.items():
    assert expected_words in reasons[name], (name, reasons[name])
    assert len(warnings_about(caplog, name)) == 1, name
  assert "5 frames" in reasons["short.mp4"] and "needs 9" in reasons["short.mp4"]
  assert batches.stats() == {
      "data/files_indexed": 2.0,
      "data/files_skipped": 5.0,
      "data/read_failures": 0.0,
      "data/clips": 24.0,
  }


def test_skips_are_reported_again_from_the_index_cache(
    bad_video_dir, bad_files, make_config, mesh, caplog
):
  config = make_config(source="video_folder", path=str(bad_video_dir))
  first = data.make_train_batches(config, mesh=mesh, seed=0)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    cached = data.make_train_batches(config, mesh=mesh, seed=0)
  reasons = lambda batches: {(s.file, s.reason) for s in batches.skipped_files}
  assert len(cached.skipped_files) == len(bad_files)
  assert reasons(cached) == reasons(first)  # the same files for the same reasons
  for name in bad_files:
    assert len(warnings_about(caplog, name)) == 1, name


def test_a_file_broken_after_indexing_is_replaced_and_counted(
    video_dir, make_config, tmp_path, caplog
):
  folder = tmp_path / "videos"
  shutil.copytree(video_dir, folder)
  config = make_config(
      source="video_folder", path=str(folder), resize_short_side=40, synthetic_num_clips=1
  )
  sources_, weights = pipeline.make_sources(config)
  names = [pathlib.Path(sources_[0].item_name(i)).name for i in range(len(sources_[0]))]
  broken = names.index("carphone.mp4")
  (folder / "carphone.mp4").write_bytes(b"\x00garbage" * 1000)

  iterator = iter(pipeline.build_train_dataset(config, seed=0, sources=sources_, weights=weights))
  with caplog.at_level(logging.WARNING):
    batches = [next(iterator) for _ in range(4)]  # 32 clips: every video several times
  indices = np.concatenate([batch["index"] for batch in batches])
  failures = np.concatenate([batch["read_failures"] for batch in batches])
  assert broken not in indices
  # Every clip drawn from the broken file came from the next video instead.
  assert failures.sum() >= 1 and set(failures.tolist()) <= {0, 1}
  assert all(index == (broken + 1) % 5 for index in indices[failures == 1])
  assert len(warnings_about(caplog, "carphone.mp4")) == 1


def test_stats_count_read_failures(video_dir, make_config, mesh, tmp_path):
  folder = tmp_path / "videos"
  shutil.copytree(video_dir, folder)
  config = make_config(source="video_folder", path=str(folder), resize_short_side=40)
  batches = data.make_train_batches(config, mesh=mesh, seed=0)
  (folder / "carphone.mp4").write_bytes(b"")
  for _ in range(4):
    next(batches)
  stats = batches.stats()
  assert stats["data/read_failures"] >= 1 and stats["data/clips"] == 32


def test_a_source_where_nothing_reads_any_more_stops_with_an_error(
    video_dir, make_config, tmp_path
):
  folder = tmp_path / "videos"
  shutil.copytree(video_dir, folder)
  config = make_config(source="video_folder", path=str(folder))
  sources_, weights = pipeline.make_sources(config)
  for path in folder.rglob("*.*"):
    path.write_bytes(b"")
  iterator = iter(pipeline.build_train_dataset(config, seed=0, sources=sources_, weights=weights))
  with pytest.raises(RuntimeError, match="consecutive items of the video_folder source"):
    next(iterator)


def test_folder_without_videos_is_a_clear_error(make_config, mesh, tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("no videos here")
  config = make_config(source="video_folder", path=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="no readable video in .*empty"):
    data.make_train_batches(config, mesh=mesh, seed=0)


def test_folder_of_only_bad_files_lists_the_reasons(bad_video_dir, bad_files, tmp_path):
  folder = tmp_path / "only_bad"
  folder.mkdir()
  for name in bad_files:
    shutil.copy(bad_video_dir / name, folder / name)
  index = sources.index_video_folder(str(folder), cache_dir=str(tmp_path / "cache"))
  spec = transforms.ClipSpec(
      num_frames=9,
      min_stride=1,
      max_stride=1,
      resize_short_side=0,
      crop_size=(32, 32),
      random_crop=True,
      random_flip=False,
  )
  with pytest.raises(
      ValueError,
      match=r"no readable video(.|\n)*5 file\(s\) skipped" r"(.|\n)*empty.mp4: empty file",
  ):
    sources.VideoFolderSource(index, spec)
