"""Decode a video corpus once into ArrayRecord shards of fixed-length uint8 clips.

  python -m bootvae_jax.data.prepare --input=/data/videos --out=gs://bucket/clips_17x256 \\
      --num_frames=17 --size=256 [--frame_stride=1] [--clips_per_video=0] [--shards=0] \\
      [--workers=8] [--nocenter_crop] [--compression=zstd:3]

then train with `--config.data.source=array_record --config.data.path=gs://bucket/clips_17x256`.

What a clip is: `num_frames` frames `frame_stride` apart, every frame scaled so its short side
is `size` (FFmpeg's swscale, as in training) and, by default, centre-cropped to size×size, so
every record has one shape and the shards hold no pixels a square crop would never see. Random
crops then come from the trainer's `data.crop_size` inside that square (a crop of `size` itself
is the whole square). `--nocenter_crop` keeps the whole resized frame (more bytes; random crops
then range over the full width). Clips from one video are `clips_per_video` windows spread
evenly over it, or with 0 (the default) every non-overlapping window from the first frame.

Inputs: a folder (searched recursively for the extensions of `sources.VIDEO_EXTENSIONS`) or a
glob (any file PyAV opens, `**` allowed); local files, since PyAV reads files. Each file is
probed and decoded with `sources.probe_video` / `sources.decode_frames`, the decoder the
`video_folder` source uses. A file that cannot give a clip (empty, not a video, truncated, too
short) is skipped and listed with its reason in `report.json`; it never stops the run.

Output (`--out`, a local folder or a URL such as gs://, through etils.epath):
  plan.json                           the options and which files go to which shard
  clips-SSSSS-of-NNNNN.array_record   records = clips (`sources.encode_clip`: .npy bytes)
  clips-SSSSS-of-NNNNN.json           that shard's clips and skipped files; written last, so
                                      its presence means the shard is complete
  index.json                          the whole corpus: clip count and shapes, source video and
                                      start frame per clip (record order), the options used
  report.json                         the files skipped, with reasons, and the counts

Shards are written by `--workers` processes, each shard to a temporary name and renamed (or,
for a URL, copied from a local staging file) when complete. A rerun with the same options
skips every complete shard, so an interrupted preparation resumes where it stopped and a
finished one is left as it is. The plan fixes the shards on the first run: files added to the
input later are not picked up (prepare into a new --out for them).
"""

from __future__ import annotations

import dataclasses
import glob as glob_lib
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Sequence
import uuid

from absl import logging
from etils import epath
import numpy as np

from bootvae_jax.cli import UserError
from bootvae_jax.data import sources
from bootvae_jax.data import transforms

PLAN = "plan.json"
REPORT = "report.json"
# Frames decoded per `decode_frames` call: consecutive windows of a video are decoded in one
# forward pass (one seek) while memory stays bounded for long videos.
FRAMES_PER_DECODE = 256
# Automatic shard count: about this many videos per shard, at least 4 shards per worker.
VIDEOS_PER_SHARD = 64


@dataclasses.dataclass(frozen=True)
class ClipOptions:
  """What the clips of a preparation look like (stored in plan.json and index.json).

  Attributes:
    num_frames: frames per clip.
    size: short side after resizing, and the square's side with `center_crop`.
    frame_stride: frames between consecutive clip frames.
    clips_per_video: windows per video, spread evenly; 0 = every non-overlapping window.
    center_crop: crop the resized frames to size×size (else keep the whole resized frame).
    compression: ArrayRecord compression ('zstd:3', 'snappy', 'brotli:6', 'uncompressed').
  """

  num_frames: int
  size: int
  frame_stride: int = 1
  clips_per_video: int = 0
  center_crop: bool = True
  compression: str = "zstd:3"

  @property
  def span(self) -> int:
    """Frames one clip covers in its video."""
    return 1 + (self.num_frames - 1) * self.frame_stride

  def problems(self) -> list[str]:
    problems = []
    for name in ("num_frames", "size", "frame_stride"):
      if getattr(self, name) < 1:
        problems.append(f"--{name}={getattr(self, name)} must be >= 1")
    if self.clips_per_video < 0:
      problems.append(f"--clips_per_video={self.clips_per_video} must be >= 0 (0 = all)")
    if self.size % 2:
      problems.append(f"--size={self.size} must be even (video frames have even sides)")
    return problems

  def clip_spec(self) -> transforms.ClipSpec:
    """The transforms' spec of a deterministic clip: resize, then centre crop."""
    return transforms.ClipSpec(
        num_frames=self.num_frames,
        min_stride=self.frame_stride,
        max_stride=self.frame_stride,
        resize_short_side=self.size,
        crop_size=(self.size, self.size),
        random_crop=False,
        random_flip=False,
    )


def clip_starts(num_available: int, options: ClipOptions) -> list[int]:
  """First frames of the clips taken from a video of `num_available` frames (increasing)."""
  last_start = num_available - options.span
  if last_start < 0:
    return []
  if options.clips_per_video == 0:
    return list(range(0, last_start + 1, options.span))
  positions = transforms.spread_positions(options.clips_per_video)
  return sorted({int(round(position * last_start)) for position in positions})


def find_inputs(input_pattern: str) -> tuple[str, list[str]]:
  """(root, files): a folder's videos (recursive), or a glob's files; root names them.

  Raises:
    UserError: nothing to read.
  """
  if sources.is_url(input_pattern):
    raise UserError(
        f"--input={input_pattern}: videos must be local files (PyAV reads files); copy them "
        "to a local disk first (the output may be a URL)"
    )
  if os.path.isdir(input_pattern):
    root = os.path.abspath(input_pattern)
    files = sources.find_files(root, sources.VIDEO_EXTENSIONS)
    what = f"folder {root} (searched recursively for {', '.join(sources.VIDEO_EXTENSIONS)})"
  else:
    files = sorted(
        os.path.abspath(path)
        for path in glob_lib.glob(input_pattern, recursive=True)
        if os.path.isfile(path)
    )
    root = os.path.commonpath(files) if files else ""
    if len(files) == 1:
      root = os.path.dirname(root)
    what = f"glob {input_pattern!r}"
  if not files:
    raise UserError(f"--input: no video file in the {what}")
  return root, files


def plan_shards(files: Sequence[str], num_shards: int) -> list[list[str]]:
  """Assigns files to shards, largest first to the lightest shard (balanced bytes)."""
  sizes = {}
  for path in files:
    try:
      sizes[path] = os.path.getsize(path)
    except OSError:
      sizes[path] = 0  # unreadable: its shard reports it
  shards: list[list[str]] = [[] for _ in range(num_shards)]
  load = [0] * num_shards
  for path in sorted(files, key=lambda p: (-sizes[p], p)):
    lightest = min(range(num_shards), key=lambda s: (load[s], s))
    shards[lightest].append(path)
    load[lightest] += sizes[path] + 1
  return [sorted(shard) for shard in shards]


def shard_name(shard: int, num_shards: int) -> str:
  return f"clips-{shard:05d}-of-{num_shards:05d}"


# --------------------------------------------------------------------------------------
# One shard (runs in a worker process).

# Shared counters for the progress line: clips written, videos done (set per worker process).
_counters: dict[str, Any] = {}


def _init_worker(clips_written, videos_done) -> None:
  _counters.update(clips=clips_written, videos=videos_done)


def _add(name: str, count: int) -> None:
  if name in _counters:
    with _counters[name].get_lock():
      _counters[name].value += count


@dataclasses.dataclass(frozen=True)
class _ShardJob:
  shard: int
  num_shards: int
  files: tuple[str, ...]
  root: str
  out: str
  staging_dir: str
  options: ClipOptions


def write_shard(job: _ShardJob) -> dict[str, Any]:
  """Writes one shard and its sidecar JSON; returns the sidecar's content."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  options = job.options
  name = shard_name(job.shard, job.num_shards)
  out = epath.Path(job.out)
  # A local output is staged beside its final name (the rename is atomic); a URL's locally.
  staging_dir = job.out if not sources.is_url(job.out) else job.staging_dir
  staged = os.path.join(staging_dir, f"{name}.array_record.tmp-{uuid.uuid4().hex[:8]}")
  writer = array_record_module.ArrayRecordWriter(staged, f"group_size:1,{options.compression}")
  clips, skipped = [], []
  try:
    for path in job.files:
      relative = os.path.relpath(path, job.root)
      written, reason = _write_video_clips(writer, path, options)
      clips.extend([relative, start, height, width] for start, height, width in written)
      if reason is not None:
        skipped.append({"file": relative, "reason": reason})
      _add("clips", len(written))
      _add("videos", 1)
    writer.close()
    final = out / f"{name}.array_record"
    if sources.is_url(job.out):
      with open(staged, "rb") as source, final.open("wb") as destination:
        shutil.copyfileobj(source, destination, 16 << 20)
      os.remove(staged)
    else:
      os.replace(staged, final)
  except BaseException:
    if os.path.exists(staged):
      os.remove(staged)
    raise
  sidecar = {
      "shard": job.shard,
      "file": f"{name}.array_record",
      "num_clips": len(clips),
      "clips": clips,
      "skipped": skipped,
      "num_files": len(job.files),
  }
  _write_json(out / f"{name}.json", sidecar)
  return sidecar


def _write_video_clips(writer, path: str, options: ClipOptions):
  """Writes the clips of one video; returns ([(start, height, width)], skip reason or None)."""
  try:
    video = sources.probe_video(path)
  except sources.UnreadableFileError as error:
    return [], str(error)
  except Exception as error:  # pylint: disable=broad-except
    # Whatever a broken file does to the demuxer, it must not stop the preparation.
    return [], f"cannot probe ({type(error).__name__}: {error})"
  starts = clip_starts(video.num_frames, options)
  if not starts:
    return [], (
        f"too short: {video.num_frames} frames; a clip of {options.num_frames} frames at "
        f"stride {options.frame_stride} needs {options.span}"
    )
  spec = options.clip_spec()
  size = transforms.resized_size(video.height, video.width, spec)
  offsets = options.frame_stride * np.arange(options.num_frames, dtype=np.int64)
  written = []
  for group in _decode_groups(starts, options):
    indices = np.concatenate([start + offsets for start in group])
    try:
      frames = sources.decode_frames(video, indices, size).reshape(
          len(group), options.num_frames, *size, 3
      )
    except Exception as error:  # pylint: disable=broad-except
      # Broken further in than the probe looked: keep the clips before, report the rest.
      return written, (
          f"decoding failed after {len(written)} of {len(starts)} clips "
          f"({type(error).__name__}: {error})"
      )
    for start, clip in zip(group, frames):
      if options.center_crop:
        clip = transforms.crop_and_flip(clip, spec, None)
      writer.write(sources.encode_clip(clip))
      written.append((start, clip.shape[1], clip.shape[2]))
  return written, None


def _decode_groups(starts: list[int], options: ClipOptions) -> list[list[int]]:
  """Consecutive clip starts, grouped so that a group decodes at most FRAMES_PER_DECODE frames
  (at least one clip); overlapping windows are split, since frame indices must increase."""
  groups, current = [], []
  for start in starts:
    overlaps = current and start < current[-1] + options.span
    if current and (overlaps or (len(current) + 1) * options.num_frames > FRAMES_PER_DECODE):
      groups.append(current)
      current = []
    current.append(start)
  if current:
    groups.append(current)
  return groups


# --------------------------------------------------------------------------------------
# The whole preparation.


def prepare(
    input_pattern: str,
    out: str,
    options: ClipOptions,
    *,
    shards: int = 0,
    workers: int = 1,
    progress_every: float = 10.0,
    staging_dir: str = "",
) -> dict[str, Any]:
  """Prepares (or finishes preparing) the clips of `input_pattern` into `out`.

  Args:
    input_pattern: a local folder or glob of videos.
    out: output folder, local or a URL (etils.epath).
    options: the clips.
    shards: number of shards; 0 = one per VIDEOS_PER_SHARD videos, at least 4 per worker.
      Fixed by the first run (plan.json).
    workers: worker processes (1 = in this process).
    progress_every: seconds between progress lines (0 = none).
    staging_dir: local folder for shards on their way to a URL; '' = the system's temp.

  Returns:
    The index (what index.json holds).

  Raises:
    UserError: bad options, no input, or an `out` prepared with other options.
  """
  problems = options.problems()
  if shards < 0:
    problems.append(f"--shards={shards} must be >= 0 (0 = automatic)")
  if workers < 1:
    problems.append(f"--workers={workers} must be >= 1")
  if problems:
    raise UserError("; ".join(problems))
  out_path = epath.Path(out)
  out_path.mkdir(parents=True, exist_ok=True)
  plan = _load_or_make_plan(input_pattern, out_path, options, shards, workers)
  num_shards = len(plan["shards"])
  done = {s for s in range(num_shards) if (out_path / f"{shard_name(s, num_shards)}.json").exists()}
  pending = [s for s in range(num_shards) if s not in done]
  num_files = sum(len(files) for files in plan["shards"])
  logging.info(
      "%d videos in %d shards: %d complete, %d to write with %d worker(s)",
      num_files,
      num_shards,
      len(done),
      len(pending),
      workers,
  )
  if pending:
    # Staging files of a killed run (its workers never renamed them) are garbage.
    for stale in out_path.glob("*.array_record.tmp-*"):
      stale.unlink()
    with tempfile.TemporaryDirectory(dir=staging_dir or None) as staging:
      jobs = [
          _ShardJob(
              shard=s,
              num_shards=num_shards,
              files=tuple(plan["shards"][s]),
              root=plan["root"],
              out=str(out_path),
              staging_dir=staging,
              options=options,
          )
          for s in pending
      ]
      files_pending = sum(len(job.files) for job in jobs)
      _run_jobs(jobs, workers, progress_every, files_pending)
  return _write_index(out_path, plan, options)


def _load_or_make_plan(input_pattern, out_path, options, shards, workers) -> dict[str, Any]:
  plan_path = out_path / PLAN
  if plan_path.exists():
    plan = json.loads(plan_path.read_text())
    if plan["options"] != dataclasses.asdict(options):
      raise UserError(
          f"--out={out_path} holds clips prepared with other options ({plan['options']}); "
          "rerun with those options to finish it, or prepare into a new --out"
      )
    if shards and shards != len(plan["shards"]):
      logging.warning(
          "--shards=%d ignored: %s was planned with %d", shards, out_path, len(plan["shards"])
      )
    try:
      _, files = find_inputs(input_pattern)
    except UserError:
      files = []
    planned = {os.path.join(plan["root"], p) for shard in plan["shards"] for p in shard}
    if new := [path for path in files if path not in planned]:
      logging.warning(
          "%d input file(s) not in %s's plan are left out (e.g. %s); prepare them into a new --out",
          len(new),
          out_path,
          new[0],
      )
    plan["shards"] = [[os.path.join(plan["root"], p) for p in shard] for shard in plan["shards"]]
    return plan
  root, files = find_inputs(input_pattern)
  num_shards = shards or max(4 * workers, -(-len(files) // VIDEOS_PER_SHARD))
  num_shards = min(num_shards, len(files))
  assignment = plan_shards(files, num_shards)
  _write_json(
      plan_path,
      {
          "input": input_pattern,
          "root": root,
          "options": dataclasses.asdict(options),
          "shards": [[os.path.relpath(p, root) for p in shard] for shard in assignment],
      },
  )
  return {
      "input": input_pattern,
      "root": root,
      "options": dataclasses.asdict(options),
      "shards": assignment,
  }


def _run_jobs(jobs: list[_ShardJob], workers: int, progress_every: float, num_files: int) -> None:
  context = multiprocessing.get_context("spawn")  # no JAX here, but never fork a threaded parent
  clips_written, videos_done = context.Value("q", 0), context.Value("q", 0)
  stop = threading.Event()
  start = time.monotonic()

  def report(final=False):
    elapsed = max(time.monotonic() - start, 1e-9)
    clips, videos = clips_written.value, videos_done.value
    eta = (num_files - videos) * elapsed / videos if videos else float("nan")
    print(
        f"prepare: {videos}/{num_files} videos, {clips} clips, {clips / elapsed:.1f} clips/s, "
        f"{elapsed:.0f} s elapsed" + ("" if final else f", ETA {_duration(eta)}"),
        flush=True,
    )

  def progress():
    while not stop.wait(progress_every):
      report()

  if progress_every > 0:
    threading.Thread(target=progress, daemon=True).start()
  try:
    if workers == 1:
      _init_worker(clips_written, videos_done)
      try:
        for job in jobs:
          write_shard(job)
      finally:
        _counters.clear()
    else:
      with context.Pool(
          min(workers, len(jobs)), initializer=_init_worker, initargs=(clips_written, videos_done)
      ) as pool:
        for _ in pool.imap_unordered(write_shard, jobs):
          pass
  finally:
    stop.set()
  if progress_every > 0:
    report(final=True)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _write_index(
    out_path: epath.Path, plan: dict[str, Any], options: ClipOptions
) -> dict[str, Any]:
  """Gathers the shards' sidecars into index.json and report.json."""
  num_shards = len(plan["shards"])
  videos, video_ids, clips, shards, skipped = [], {}, [], [], []
  for s in range(num_shards):
    sidecar = json.loads((out_path / f"{shard_name(s, num_shards)}.json").read_text())
    shards.append({"file": sidecar["file"], "num_clips": sidecar["num_clips"]})
    skipped.extend(sidecar["skipped"])
    for relative, start, height, width in sidecar["clips"]:
      if relative not in video_ids:
        video_ids[relative] = len(videos)
        videos.append(relative)
      clips.append([video_ids[relative], start, height, width])
  shapes: dict[str, int] = {}
  for _, _, height, width in clips:
    key = f"{options.num_frames}x{height}x{width}x3"
    shapes[key] = shapes.get(key, 0) + 1
  index = {
      "format": sources.CLIPS_FORMAT,
      "version": sources.CLIPS_FORMAT_VERSION,
      "options": dataclasses.asdict(options),
      "input": plan.get("input", ""),
      "root": plan["root"],
      "num_clips": len(clips),
      "clip_shapes": shapes,
      "num_videos": len(videos),
      "num_skipped": len(skipped),
      "shards": shards,
      "videos": videos,
      # [video (index into `videos`), start frame, height, width] per record, in record order.
      "clips": clips,
      "skipped": skipped,
  }
  report = {
      "num_files": sum(len(files) for files in plan["shards"]),
      "num_videos": len(videos),
      "num_clips": len(clips),
      "num_skipped": len(skipped),
      "skipped": skipped,
  }
  _write_json(out_path / REPORT, report)
  _write_json(out_path / sources.CLIPS_INDEX, index)  # last: the folder is ready to read
  return index


def _write_json(path: epath.Path, content: Any) -> None:
  """Writes then renames, so a reader never sees half a file."""
  temporary = path.parent / f"{path.name}.tmp-{uuid.uuid4().hex[:8]}"
  temporary.write_text(json.dumps(content))
  temporary.replace(path)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {' '.join(argv[1:])}; every option is a --flag")
  options = ClipOptions(
      num_frames=FLAGS.num_frames,
      size=FLAGS.size,
      frame_stride=FLAGS.frame_stride,
      clips_per_video=FLAGS.clips_per_video,
      center_crop=FLAGS.center_crop,
      compression=FLAGS.compression,
  )
  index = prepare(
      FLAGS.input,
      FLAGS.out,
      options,
      shards=FLAGS.shards,
      workers=FLAGS.workers,
      progress_every=FLAGS.progress_every,
      staging_dir=FLAGS.staging_dir,
  )
  print(
      f"prepared {index['num_clips']} clips of {', '.join(index['clip_shapes']) or 'no shape'} "
      f"from {index['num_videos']} videos in {len(index['shards'])} shards at {FLAGS.out}; "
      f"{index['num_skipped']} file(s) skipped (reasons in {REPORT})",
      flush=True,
  )


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("input", None, "Folder of videos (recursive) or a glob.", required=True)
  flags.DEFINE_string("out", None, "Output folder, local or gs://.", required=True)
  flags.DEFINE_integer("num_frames", 17, "Frames per clip.")
  flags.DEFINE_integer("size", 256, "Short side after resize (and the centre square's side).")
  flags.DEFINE_integer("frame_stride", 1, "Frames between consecutive clip frames.")
  flags.DEFINE_integer("clips_per_video", 0, "Windows per video, spread evenly; 0 = all.")
  flags.DEFINE_bool("center_crop", True, "Crop to size×size; --nocenter_crop keeps the frame.")
  flags.DEFINE_string("compression", "zstd:3", "ArrayRecord compression of each record.")
  flags.DEFINE_integer("shards", 0, "Number of shards (0 = automatic).")
  flags.DEFINE_integer("workers", max(1, (os.cpu_count() or 2) - 1), "Worker processes.")
  flags.DEFINE_float("progress_every", 10.0, "Seconds between progress lines.")
  flags.DEFINE_string("staging_dir", "", "Local folder for shards bound for a URL.")
  return flags.FLAGS


if __name__ == "__main__":
  from bootvae_jax import cli  # pylint: disable=g-import-not-at-top

  FLAGS = _define_flags()
  cli.run(main)
