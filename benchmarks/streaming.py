"""Memory and time of long-video encode + decode: exact streaming vs cross-faded chunks vs the
whole clip, and the quality of each against the whole-clip result.

  python benchmarks/streaming.py [--frames=17,65,257,1025] [--size=256] [--base_channels=8]
      [--whole_max_frames=65] [--quality_frames=65] [--out=benchmarks/streaming.png]

Each (method, frames) point runs in a fresh process, which generates a moving synthetic video
block by block (16 frames at a time), reconstructs it (posterior mean) and drops the output
after scoring it. It first runs a warm-up (the same method on 2 chunks, or the whole clip for
`whole`) so that every program is compiled, then resets the kernel's peak-RSS counter
(`/proc/self/clear_refs`) and times the real run: `peak_rss_mb` is the memory the method
needs while running (JAX runtime, programs, parameters, its working set), `compile_peak_rss_mb`
the peak including compilation, `seconds` excludes compilation. Methods:
  * `stream`: `streaming.stream_reconstruct_blocks` (exact; chunks of `--chunk_frames`),
  * `crossfade`: `chunked.reconstruct_stream` (ProMAG's chunks overlapping by 4 frames),
  * `whole`: the model on the whole clip (only up to `--whole_max_frames`: it grows with T).
A last process reconstructs `--quality_frames` frames with all three and reports the PSNR of
stream and crossfade against whole (of the MSE over all frames, the worst frame's, and the
largest difference).

Prints one JSON line per point and writes a PNG: peak memory and time against frames.
On CPU, "memory" is host memory; on an accelerator the same script reports the process's
host memory plus `peak_bytes_in_use` of the device when the backend provides it.
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_FRAMES = flags.DEFINE_list("frames", ["17", "65", "257", "1025"], "Video lengths (1 + 16k).")
_SIZE = flags.DEFINE_integer("size", 256, "Frame height and width.")
_BASE_CHANNELS = flags.DEFINE_integer("base_channels", 8, "Width of the ProMAG base model.")
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 17, "Chunk length (1 + 4k).")
_WHOLE_MAX_FRAMES = flags.DEFINE_integer("whole_max_frames", 65, "Longest video run as one clip.")
_QUALITY_FRAMES = flags.DEFINE_integer("quality_frames", 65, "Length of the quality check.")
_METHODS = flags.DEFINE_list("methods", ["stream", "crossfade", "whole"], "Methods to run.")
_OUT = flags.DEFINE_string("out", "benchmarks/streaming.png", "Where to write the plot.")
_POINT = flags.DEFINE_string("point", None, "(internal) run one 'method:frames' point.")

BLOCK = 16


def _model():
  from bootvae_jax import models
  from bootvae_jax.inference import chunked
  from bootvae_jax.models import architectures
  from bootvae_jax.models import autoencoder

  config = architectures.promag_base(
      z_dim=8, base_channels=_BASE_CHANNELS.value, num_groups=min(8, _BASE_CHANNELS.value)
  )
  return chunked.ChunkCodec(models.build_model(config, rngs=autoencoder.init_rngs(0)))


def _blocks(frames: int, size: int):
  """(1, t, size, size, 3) in [-1, 1]: gratings drifting with the frame index."""
  import numpy as np

  y, x = np.meshgrid(
      np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij"
  )
  for start in range(0, frames, BLOCK):
    t = np.arange(start, min(start + BLOCK, frames), dtype=np.float32)[:, None, None, None]
    phase = np.float32([0.0, 2.1, 4.2])
    video = np.sin(0.11 * x[..., None] + 0.05 * y[..., None] + 0.3 * t + phase)
    video = 0.6 * video + 0.3 * np.cos(0.07 * y[..., None] - 0.2 * t + phase[::-1])
    yield video[None].astype(np.float32)


def _device_peak():
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _reconstruct(codec, method: str, blocks):
  from bootvae_jax.inference import chunked
  from bootvae_jax.inference import streaming
  import numpy as np

  if method == "stream":
    return streaming.stream_reconstruct_blocks(codec, blocks, _CHUNK_FRAMES.value)
  if method == "crossfade":
    return chunked.reconstruct_stream(
        codec, blocks, chunk_frames=_CHUNK_FRAMES.value, overlap_frames=4
    )
  video = np.concatenate(list(blocks), axis=1)
  return [codec.reconstruct(video)]


def _peak_rss_mb() -> float:
  """The process's peak resident memory since start or the last `_reset_peak_rss`."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return round(int(line.split()[1]) / 1024, 1)
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _reset_peak_rss() -> None:
  with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to the current RSS
    f.write("5")


def run_point(method: str, frames: int) -> dict:
  import numpy as np

  codec = _model()
  warmup = frames if method == "whole" else 2 * _CHUNK_FRAMES.value - 1
  for _ in _reconstruct(codec, method, _blocks(warmup, _SIZE.value)):
    pass
  compile_peak = _peak_rss_mb()
  _reset_peak_rss()
  start = time.perf_counter()
  count, energy = 0, 0.0
  for piece in _reconstruct(codec, method, _blocks(frames, _SIZE.value)):
    count += piece.shape[1]
    energy += float(np.sum(np.square(piece)))  # consume the frames, keep nothing
  seconds = time.perf_counter() - start
  assert count == frames, (count, frames)
  return dict(
      method=method,
      frames=frames,
      size=_SIZE.value,
      seconds=round(seconds, 3),
      frames_per_s=round(frames / seconds, 3),
      peak_rss_mb=_peak_rss_mb(),
      compile_peak_rss_mb=compile_peak,
      device_peak_bytes=_device_peak(),
      checksum=energy / count,
  )


def run_quality(frames: int) -> list[dict]:
  import numpy as np
  from bootvae_jax.core import metrics

  codec = _model()
  video = np.concatenate(list(_blocks(frames, _SIZE.value)), axis=1)
  whole = codec.reconstruct(video)
  rows = []
  for method in ("stream", "crossfade"):
    out = np.concatenate(list(_reconstruct(codec, method, [video])), axis=1)
    mse = float(np.mean(np.square(out - whole)))
    rows.append(
        dict(
            quality=method,
            frames=frames,
            size=_SIZE.value,
            psnr_vs_whole_db=10 * np.log10(4.0 / mse) if mse else None,
            min_frame_psnr_vs_whole_db=float(np.min(metrics.per_frame_psnr(out, whole))),
            max_abs_diff=float(np.max(np.abs(out - whole))),
        )
    )
  return rows


def _child(args: list[str]) -> list[dict]:
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  result = subprocess.run(
      [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
  )
  if result.returncode:
    return [dict(args=args, error=result.stderr.strip().splitlines()[-1:])]
  return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _plot(rows: list[dict], path: str) -> None:
  from bootvae_jax.core import visualize

  panels = []
  for key, label in (("peak_rss_mb", "peak memory (MB)"), ("seconds", "time (s)")):
    series = []
    for method in _METHODS.value:
      points = sorted((r["frames"], r[key]) for r in rows if r.get("method") == method)
      if points:
        series.append((method, [p[0] for p in points], [p[1] for p in points]))
    panels.append(
        dict(
            series=series,
            title=f"{label}, {_SIZE.value}² encode + decode",
            xlabel="frames",
            ylabel=label,
            log_x=True,
        )
    )
  visualize.save_line_plots(path, panels)


def main(argv) -> None:
  del argv
  if _POINT.value:
    method, frames = _POINT.value.split(":")
    rows = run_quality(int(frames)) if method == "quality" else [run_point(method, int(frames))]
    for row in rows:
      print(json.dumps(row), flush=True)
    return
  passthrough = [
      f"--size={_SIZE.value}",
      f"--base_channels={_BASE_CHANNELS.value}",
      f"--chunk_frames={_CHUNK_FRAMES.value}",
  ]
  rows = []
  for frames in map(int, _FRAMES.value):
    for method in _METHODS.value:
      if method == "whole" and frames > _WHOLE_MAX_FRAMES.value:
        continue
      for row in _child([f"--point={method}:{frames}"] + passthrough):
        print(json.dumps(row), flush=True)
        rows.append(row)
  for row in _child([f"--point=quality:{_QUALITY_FRAMES.value}"] + passthrough):
    print(json.dumps(row), flush=True)
  _plot(rows, _OUT.value)
  print(json.dumps(dict(plot=_OUT.value)))


if __name__ == "__main__":
  app.run(main)
