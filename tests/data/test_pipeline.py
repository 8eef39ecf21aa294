"""grain pipeline: global sharded batches, determinism, per-process shards, exact resume."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from bootvae_jax import data
from bootvae_jax.data import pipeline


def take(batches, count):
  return [np.asarray(next(batches)["video"]) for _ in range(count)]


def test_batch_shape_dtype_range_and_sharding(make_config, mesh):
  batches = data.make_train_batches(make_config(), mesh=mesh, seed=0)
  video = next(batches)["video"]
  assert isinstance(video, jax.Array)
  assert video.shape == (8, 9, 32, 32, 3) and video.dtype == np.float32
  assert video.sharding == jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(("data", "fsdp"))
  )
  # Each of the 4 devices holds 2 clips.
  assert {shard.data.shape for shard in video.addressable_shards} == {(2, 9, 32, 32, 3)}
  values = np.asarray(video)
  assert values.min() >= -1.0 and values.max() <= 1.0
  assert values.min() < -0.5 and values.max() > 0.5  # real content, not a constant
  assert batches.stats()["data/clips"] == 8


def test_same_seed_same_batches_and_other_seeds_differ(make_config, mesh):
  config = make_config(random_flip=True)
  first = take(data.make_train_batches(config, mesh=mesh, seed=0), 3)
  again = take(data.make_train_batches(config, mesh=mesh, seed=0), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  other_run_seed = take(data.make_train_batches(config, mesh=mesh, seed=1), 1)
  config.seed = 5
  other_data_seed = take(data.make_train_batches(config, mesh=mesh, seed=0), 1)
  assert not np.array_equal(first[0], other_run_seed[0])
  assert not np.array_equal(first[0], other_data_seed[0])


def test_process_shards_are_disjoint_and_cover_an_epoch(make_config):
  config = make_config(synthetic_num_clips=32)
  seen = []
  for process_index in range(2):
    iterator = iter(
        pipeline.build_train_dataset(config, seed=0, process_index=process_index, process_count=2)
    )
    batches = [next(iterator) for _ in range(4)]  # 4 local batches of 4 = half an epoch
    assert all(batch["video"].shape == (4, 9, 32, 32, 3) for batch in batches)
    seen.append(np.concatenate([batch["index"] for batch in batches]).tolist())
  assert len(set(seen[0])) == 16 and len(set(seen[1])) == 16
  assert not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == set(range(32))


def test_every_epoch_is_reshuffled(make_config):
  config = make_config(synthetic_num_clips=16, batch_size=16)
  iterator = iter(pipeline.build_train_dataset(config, seed=0))
  first_epoch, second_epoch = next(iterator)["index"], next(iterator)["index"]
  assert sorted(first_epoch) == sorted(second_epoch) == list(range(16))
  assert list(first_epoch) != list(second_epoch)


@pytest.mark.parametrize(
    "source, num_workers", [("video_folder", 0), ("video_folder", 2), ("array_record", 2)]
)
def test_resume_from_the_saved_position_gives_exactly_the_next_batches(
    source, num_workers, make_config, mesh, video_dir, prepared_dir
):
  config = make_config(
      source=source,
      path=str(video_dir if source == "video_folder" else prepared_dir),
      frame_stride=(1, 3),
      resize_short_side=40 if source == "video_folder" else 0,
      random_flip=True,
  )
  # The reference is an uninterrupted in-process run; worker processes split whole batches
  # and interleave them in order, so they must reproduce it too.
  uninterrupted = take(data.make_train_batches(config, mesh=mesh, seed=0), 5)
  assert not np.array_equal(uninterrupted[2], uninterrupted[3])
  config.num_workers = num_workers

  first_run = data.make_train_batches(config, mesh=mesh, seed=0)
  before_save = take(first_run, 2)
  saved = json.loads(json.dumps(first_run.state()))  # what a checkpoint stores
  assert saved == {"examples": 16, "batch_size": 8, "read_failures": 0, "clips_per_source": [16]}
  first_run.close()

  resumed = data.make_train_batches(config, mesh=mesh, seed=0)
  resumed.restore(saved)
  after_resume = take(resumed, 3)
  assert resumed.stats()["data/clips"] == 40  # counted since the run began
  resumed.close()
  for step, got in enumerate(before_save + after_resume):
    np.testing.assert_array_equal(got, uninterrupted[step], err_msg=f"batch {step}")


@pytest.mark.parametrize("source", ["synthetic", "array_record"])
def test_global_batches_do_not_depend_on_the_process_count(source, make_config, prepared_dir):
  """Process p's local batch k is the p-th block of global batch k, which holds examples
  [start + k·B, start + (k+1)·B) of one stream: 1, 2 or 4 processes, from any start."""
  config = make_config(synthetic_num_clips=12, batch_size=4, random_flip=True)
  if source == "array_record":
    config.update(source=source, path=str(prepared_dir))

  def global_batches(process_count, start, count=3):
    iterators = [
        iter(
            pipeline.build_train_dataset(
                config,
                seed=0,
                process_index=p,
                process_count=process_count,
                start_example=start,
            )
        )
        for p in range(process_count)
    ]
    batches = []
    for _ in range(count):
      local = [next(iterator) for iterator in iterators]
      batches.append({key: np.concatenate([b[key] for b in local]) for key in ("video", "index")})
    return batches

  stream = {  # examples 0..19 of the single-process stream
      key: np.concatenate([batch[key] for batch in global_batches(1, 0, count=5)])
      for key in ("video", "index")
  }
  assert len(set(stream["index"].tolist())) > 8  # a real, shuffled stream
  for process_count, start in ((2, 0), (4, 4), (2, 6)):
    batches = global_batches(process_count, start)
    for key in ("video", "index"):
      np.testing.assert_array_equal(
          np.concatenate([batch[key] for batch in batches]),
          stream[key][start : start + 12],
          err_msg=f"{process_count} processes from example {start}: {key}",
      )


def test_mixture_follows_weights(make_config, mesh, video_dir):
  config = make_config(
      source="mixture",
      mixture=(
          dict(source="synthetic", weight=1.0),
          dict(source="video_folder", path=str(video_dir), resize_short_side=40, weight=3.0),
      ),
  )
  batches = data.make_train_batches(config, mesh=mesh, seed=0)
  assert next(batches)["video"].shape == (8, 9, 32, 32, 3)
  next(batches)
  stats = batches.stats()
  assert stats["data/clips_source0_synthetic"] == 4
  assert stats["data/clips_source1_video_folder"] == 12
  assert stats["data/files_indexed"] == 5


def test_prepared_clips_mix_with_other_sources(make_config, mesh, prepared_dir, video_dir):
  config = make_config(
      source="mixture",
      mixture=(
          dict(source="array_record", path=str(prepared_dir), weight=3.0),
          dict(source="video_folder", path=str(video_dir), resize_short_side=40, weight=1.0),
      ),
  )
  data.validate(config, temporal_factor=4, spatial_factor=8)
  batches = data.make_train_batches(config, mesh=mesh, seed=0)
  assert next(batches)["video"].shape == (8, 9, 32, 32, 3)
  next(batches)
  stats = batches.stats()
  assert stats["data/clips_source0_array_record"] == 12
  assert stats["data/clips_source1_video_folder"] == 4
  assert stats["data/files_indexed"] == 5 + 5


def test_images_and_videos_train_together_as_one_frame_clips(
    make_config, mesh, video_dir, tmp_path
):
  (tmp_path / "images").mkdir()
  for index in range(3):
    Image.new("RGB", (48, 40), (80 * index, 50, 200)).save(tmp_path / "images" / f"{index}.png")
  config = make_config(
      num_frames=1,
      source="mixture",
      mixture=(
          dict(source="image_folder", path=str(tmp_path / "images"), weight=1.0),
          dict(source="video_folder", path=str(video_dir), resize_short_side=40, weight=1.0),
      ),
  )
  data.validate(config, temporal_factor=4, spatial_factor=8)
  batches = data.make_train_batches(config, mesh=mesh, seed=0)
  assert next(batches)["video"].shape == (8, 1, 32, 32, 3)
  stats = batches.stats()
  assert stats["data/clips_source0_image_folder"] == stats["data/clips_source1_video_folder"] == 4
  assert stats["data/files_indexed"] == 3 + 5


def test_eval_clips_are_deterministic_centre_crops(make_config, video_dir):
  config = make_config(
      source="video_folder", path=str(video_dir), resize_short_side=40, random_flip=True
  )
  clips = data.make_eval_clips(config, num_clips=7)
  assert clips.shape == (7, 9, 32, 32, 3) and clips.dtype == np.float32
  assert clips.min() >= -1.0 and clips.max() <= 1.0
  np.testing.assert_array_equal(clips, data.make_eval_clips(config, num_clips=7))
  # 7 clips over 5 videos: videos 0 and 1 give a second clip from another position.
  assert not np.array_equal(clips[0], clips[5])
  assert data.make_eval_clips(config).shape[0] == config.eval_num_clips


def test_eval_clips_never_repeat_a_window(make_config, one_clip_videos_dir):
  # 6 clips asked of 2 one-window videos: every further visit reads the same window again.
  config = make_config(source="video_folder", path=str(one_clip_videos_dir))
  clips = data.make_eval_clips(config, num_clips=6)
  assert clips.shape == (2, 9, 32, 32, 3)
  assert not np.array_equal(clips[0], clips[1])


def test_batch_that_does_not_split_over_the_mesh_is_an_error(make_config, mesh):
  with pytest.raises(ValueError, match="multiple of 4"):
    data.make_train_batches(make_config(batch_size=6), mesh=mesh, seed=0)


def test_validate_explains_the_frame_rule():
  config = data.default_config()
  config.num_frames = 16
  with pytest.raises(ValueError) as error:
    data.validate(config, temporal_factor=4, spatial_factor=8)
  assert "data.num_frames=16; a 4x causal model needs 1+4k frames (e.g. 13 or 17)" in str(
      error.value
  )
  config.num_frames = 17
  data.validate(config, temporal_factor=4, spatial_factor=8)  # the defaults are valid
  data.validate(config, temporal_factor=16, spatial_factor=16)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(crop_size=(30, 32)), "divisible by 8"),
        (dict(source="videos"), "data.source='videos' is unknown"),
        (dict(source="video_folder"), "data.path is empty"),
        (dict(source="video_folder", path="/no/such/folder"), "not an existing folder"),
        (dict(source="tfds"), "tfds_name is empty"),
        (dict(frame_stride=(4, 2)), "frame_stride"),
        (dict(resize_short_side=16), "smaller than data.crop_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(source="mixture"), "non-empty data.mixture"),
    ],
)
def test_validate_rejects_bad_configs(overrides, message):
  config = data.default_config()
  config.update(overrides)
  with pytest.raises(ValueError, match=message):
    data.validate(config, temporal_factor=4, spatial_factor=8)


def test_images_mix_with_videos_only_in_one_frame_configs(tmp_path, video_dir):
  (tmp_path / "images").mkdir()
  config = data.default_config()
  config.update(
      source="mixture",
      mixture=(
          dict(source="video_folder", path=str(video_dir), weight=1.0),
          dict(source="image_folder", path=str(tmp_path / "images"), weight=1.0),
      ),
  )
  with pytest.raises(ValueError, match=r"data.mixture\[1\].*1-frame clips.*num_frames=17"):
    data.validate(config, temporal_factor=4, spatial_factor=8)
  config.num_frames = 1
  data.validate(config, temporal_factor=4, spatial_factor=8)
  config.mixture = (dict(source="video_folder", path=str(video_dir), num_frames=1),)
  with pytest.raises(ValueError, match="clip shape is shared"):
    data.validate(config, temporal_factor=4, spatial_factor=8)
