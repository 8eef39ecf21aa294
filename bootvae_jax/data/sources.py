"""Clip sources: video folders (PyAV), prepared clip shards (ArrayRecord), TFDS, images, and
the procedural synthetic source.

Each source is a grain random-access source (`len(source)`, `source[i]` = a description of
item i) plus `read_clip(i, rng)`, which decodes item i into one transformed clip:
(T, crop_height, crop_width, 3) uint8. The pipeline draws indices with grain (shuffle, repeat,
shard) and calls `read_clip` inside its worker processes.

Video folders are probed once: every file with a video extension (searched recursively) is
opened with PyAV, its packets are counted (no decoding), and its first and last frames are
decoded with the same code that reads clips later. Files that fail (zero bytes, not a video,
truncated, no frames) are recorded as skipped with a reason; the index of (file, frame count,
fps, size, frame timestamps) is cached as JSON in `data.index_cache_dir`, keyed by the folder
and reused per file while the file's size and mtime are unchanged.

Prepared clip shards (`python -m bootvae_jax.data.prepare`) hold fixed-length uint8 clips
decoded once from a video corpus; reading one is a record lookup and a decompression, no video
decoding, which is what keeps a pod host's chips fed (see README, Data).

This module imports neither JAX nor TensorFlow (TFDS is imported only for the tfds source):
grain worker processes unpickle these sources and should start fast.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import json
import os
import uuid
from typing import Any, Sequence

from absl import logging
import av
from etils import epath
import numpy as np
from PIL import Image

from bootvae_jax.cli import UserError
from bootvae_jax.data import transforms

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_INDEX_CACHE_DIR = os.path.join("~", ".cache", "bootvae_jax")
# Bump when the cached probe result changes meaning; old caches are then re-probed.
INDEX_FORMAT_VERSION = 2  # 2: packets outside the edit list are not frames
# A prepared clip folder: `CLIPS_INDEX` describes the shards (written last, by
# `bootvae_jax.data.prepare`); each record is one clip in numpy's .npy format.
CLIPS_INDEX = "index.json"
CLIPS_FORMAT = "bootvae_jax.clips"
CLIPS_FORMAT_VERSION = 1


class UnreadableFileError(Exception):
  """A file cannot be used; the message is the reason shown to the user."""


@dataclasses.dataclass(frozen=True)
class SkippedFile:
  """A file left out of a source, and why."""

  file: str
  reason: str

  def to_json(self) -> dict[str, str]:
    return {"file": self.file, "reason": self.reason}


@dataclasses.dataclass(frozen=True, eq=False)
class VideoFile:
  """One readable video as probed.

  Attributes:
    path: absolute path.
    num_frames: decodable frames (counted from the container's packets).
    fps: average frame rate (0.0 when the container does not say).
    height: frame height in pixels.
    width: frame width in pixels.
    pts_start: timestamp of frame 0 in the stream's time base, when timestamps are regular.
    pts_step: timestamp increment per frame, when regular.
    pts_table: (num_frames,) int64 timestamps in display order, when irregular.
  Frames are found by timestamp after a seek. With none of the three pts fields (a container
  without timestamps) clips are decoded from the start of the file, counting frames.
  """

  path: str
  num_frames: int
  fps: float
  height: int
  width: int
  pts_start: int | None = None
  pts_step: int | None = None
  pts_table: np.ndarray | None = None

  @property
  def has_timestamps(self) -> bool:
    return self.pts_step is not None or self.pts_table is not None

  def frame_pts(self, frame_indices: np.ndarray) -> list[int]:
    """Timestamps of the given frames (requires `has_timestamps`)."""
    if self.pts_table is not None:
      return [int(pts) for pts in self.pts_table[frame_indices]]
    return [self.pts_start + self.pts_step * int(i) for i in frame_indices]

  def to_json(self, folder: str) -> dict[str, Any]:
    record = {
        "file": os.path.relpath(self.path, folder),
        "num_frames": self.num_frames,
        "fps": self.fps,
        "height": self.height,
        "width": self.width,
        "pts_start": self.pts_start,
        "pts_step": self.pts_step,
    }
    if self.pts_table is not None:
      record["pts_table"] = self.pts_table.tolist()
    return record

  @classmethod
  def from_json(cls, folder: str, record: dict[str, Any]) -> VideoFile:
    table = record.get("pts_table")
    return cls(
        path=os.path.join(folder, record["file"]),
        num_frames=int(record["num_frames"]),
        fps=float(record["fps"]),
        height=int(record["height"]),
        width=int(record["width"]),
        pts_start=record["pts_start"],
        pts_step=record["pts_step"],
        pts_table=None if table is None else np.asarray(table, np.int64),
    )


def find_files(folder: str, extensions: Sequence[str]) -> list[str]:
  """Absolute paths under `folder` (recursive) whose extension is in `extensions`, sorted."""
  found = []
  for directory, subdirectories, names in os.walk(os.path.abspath(folder)):
    subdirectories.sort()
    for name in names:
      if os.path.splitext(name)[1].lower() in extensions:
        found.append(os.path.join(directory, name))
  return sorted(found)


def encode_clip(clip: np.ndarray) -> bytes:
  """(T, H, W, 3) uint8 -> one shard record: .npy bytes (shape and dtype travel with it)."""
  buffer = io.BytesIO()
  np.lib.format.write_array(buffer, np.ascontiguousarray(clip), allow_pickle=False)
  return buffer.getvalue()


def decode_clip(record: bytes) -> np.ndarray:
  """A shard record -> (T, H, W, 3) uint8 (the inverse of `encode_clip`)."""
  return np.lib.format.read_array(io.BytesIO(record), allow_pickle=False)


def is_url(path: str) -> bool:
  """gs://, s3://, ...: reached through etils.epath (and ArrayRecord's own GCS reader)."""
  return "://" in str(path)


# --------------------------------------------------------------------------------------
# Video decoding and probing.


def decode_frames(video: VideoFile, frame_indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Decodes the given frames of a video, scaled to `size`.

  Seeks to the keyframe before the first wanted frame and decodes forward, matching frames
  by timestamp; frames still missing after that (a seek that landed past them, through an
  imprecise container index) are looked for once more, decoding from the start.

  Args:
    video: the probed file.
    frame_indices: (T,) increasing frame indices in [0, video.num_frames).
    size: (height, width) of the output frames (swscale does scale and colour conversion).

  Returns:
    (T, height, width, 3) uint8 RGB.

  Raises:
    UnreadableFileError: a wanted frame was not produced by the decoder.
    av.FFmpegError, OSError: the file could not be read.
  """
  height, width = size
  frames = np.empty((len(frame_indices), height, width, 3), np.uint8)
  with av.open(video.path) as container:
    stream = container.streams.video[0]
    if video.has_timestamps:
      slot_of_pts = {pts: slot for slot, pts in enumerate(video.frame_pts(frame_indices))}
      container.seek(min(slot_of_pts), stream=stream, backward=True, any_frame=False)
      missing = _decode_by_timestamp(container, stream, slot_of_pts, frames, size)
      if missing:
        start_pts = video.frame_pts(np.zeros(1, np.int64))[0]
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)
        missing = _decode_by_timestamp(container, stream, missing, frames, size)
      if missing:
        raise UnreadableFileError(
            f"frames at timestamps {sorted(missing)[:4]} did not decode (truncated or corrupt)"
        )
    else:
      wanted = {int(i): slot for slot, i in enumerate(frame_indices)}
      for frame_index, frame in enumerate(container.decode(stream)):
        if frame_index in wanted:
          frames[wanted.pop(frame_index)] = _to_rgb(frame, width, height)
          if not wanted:
            break
      if wanted:
        raise UnreadableFileError(
            f"frames {sorted(wanted)[:4]} did not decode (truncated or corrupt)"
        )
  return frames


def _decode_by_timestamp(container, stream, slot_of_pts, frames, size) -> dict[int, int]:
  """Fills `frames` with the frames whose pts are wanted; returns the ones still missing."""
  height, width = size
  last_pts = max(slot_of_pts)
  for frame in container.decode(stream):
    if frame.pts is None:
      continue
    slot = slot_of_pts.pop(frame.pts, None)
    if slot is not None:
      frames[slot] = _to_rgb(frame, width, height)
    if not slot_of_pts or frame.pts >= last_pts:
      break
  return slot_of_pts


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
  return frame.reformat(
      width=width, height=height, format="rgb24", interpolation=transforms.SWSCALE_INTERPOLATION
  ).to_ndarray()


def probe_video(path: str) -> VideoFile:
  """Opens a file, counts its frames and decodes its first and last frames.

  Raises:
    UnreadableFileError: with the reason the file cannot be used.
  """
  if os.path.getsize(path) == 0:
    raise UnreadableFileError("empty file (0 bytes)")
  try:
    container = av.open(path)
  except av.FFmpegError as error:
    raise UnreadableFileError(f"not a readable video container ({error})") from error
  with container:
    if not container.streams.video:
      raise UnreadableFileError("no video stream")
    stream = container.streams.video[0]
    height, width = stream.codec_context.height, stream.codec_context.width
    rate = stream.average_rate or stream.guessed_rate
    timestamps = []
    has_all_timestamps = True
    try:
      for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
          continue
        if packet.is_discard:  # outside the container's edit list: the decoder drops it
          continue
        timestamp = packet.pts if packet.pts is not None else packet.dts
        has_all_timestamps &= timestamp is not None
        timestamps.append(timestamp)
    except av.FFmpegError as error:
      raise UnreadableFileError(f"corrupt container ({error})") from error
  if not timestamps:
    raise UnreadableFileError("no video frames")
  if not height or not width:
    raise UnreadableFileError("video stream has no frame size")
  video = VideoFile(
      path=path,
      num_frames=len(timestamps),
      fps=float(rate) if rate else 0.0,
      height=height,
      width=width,
      **_timestamp_fields(timestamps if has_all_timestamps else None),
  )
  try:
    decode_frames(video, np.array([0, video.num_frames - 1]), (height, width))
  except (av.FFmpegError, UnreadableFileError) as error:
    raise UnreadableFileError(
        f"truncated or corrupt: first/last of {video.num_frames} frames do not decode " f"({error})"
    ) from error
  return video


def _timestamp_fields(timestamps: list[int] | None) -> dict[str, Any]:
  """Compact form of the frames' display timestamps: start + step * i when regular."""
  if timestamps is None:
    return {}
  ordered = np.sort(np.asarray(timestamps, np.int64))
  if len(np.unique(ordered)) != len(ordered):
    return {}  # duplicate timestamps cannot identify frames: decode by counting
  steps = np.diff(ordered)
  if len(ordered) == 1 or np.all(steps == steps[0]):
    return {"pts_start": int(ordered[0]), "pts_step": int(steps[0]) if len(steps) else 1}
  return {"pts_table": ordered}


@dataclasses.dataclass
class VideoIndex:
  """The usable videos of a folder and the files left out."""

  folder: str
  videos: list[VideoFile]
  skipped: list[SkippedFile]


def index_video_folder(folder: str, *, cache_dir: str = "") -> VideoIndex:
  """Probes every video under `folder`, reusing the cached result of unchanged files.

  Args:
    folder: searched recursively for VIDEO_EXTENSIONS.
    cache_dir: where the JSON index lives; '' = DEFAULT_INDEX_CACHE_DIR. An unwritable cache
      is only a warning.

  Returns:
    The index; files that failed the probe are in `skipped`, not in `videos`.
  """
  folder = os.path.abspath(folder)
  cache_dir = cache_dir or os.path.expanduser(DEFAULT_INDEX_CACHE_DIR)
  folder_key = hashlib.sha1(folder.encode()).hexdigest()[:16]
  # The cache may live anywhere epath reaches (a gs:// URL shared by the hosts of a pod).
  cache_path = epath.Path(cache_dir).expanduser() / f"video_index_{folder_key}.json"
  cached = _read_index_cache(cache_path, folder)
  records = {}
  for path in find_files(folder, VIDEO_EXTENSIONS):
    relative = os.path.relpath(path, folder)
    try:
      stat = os.stat(path)
    except OSError as error:  # e.g. a dangling symlink
      records[relative] = {
          "size": -1,
          "mtime_ns": -1,
          "video": None,
          "reason": f"cannot read ({error.strerror})",
      }
      continue
    record = cached.get(relative)
    if record is None or record["size"] != stat.st_size or record["mtime_ns"] != stat.st_mtime_ns:
      record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **_probe_record(path, folder)}
    records[relative] = record
  if records != cached:
    _write_index_cache(cache_path, folder, records)
  videos, skipped = [], []
  for relative, record in records.items():
    if record.get("video") is not None:
      videos.append(VideoFile.from_json(folder, record["video"]))
    else:
      skipped.append(SkippedFile(os.path.join(folder, relative), record["reason"]))
  return VideoIndex(folder=folder, videos=videos, skipped=skipped)


def _probe_record(path: str, folder: str) -> dict[str, Any]:
  try:
    return {"video": probe_video(path).to_json(folder)}
  except UnreadableFileError as error:
    return {"video": None, "reason": str(error)}
  except Exception as error:  # pylint: disable=broad-except
    # Whatever a broken file does to the demuxer, it must not stop the index build.
    return {"video": None, "reason": f"cannot probe ({type(error).__name__}: {error})"}


def _read_index_cache(cache_path: epath.Path, folder: str) -> dict[str, Any]:
  try:
    content = json.loads(cache_path.read_text())
  except (OSError, ValueError):
    return {}
  if content.get("version") != INDEX_FORMAT_VERSION or content.get("folder") != folder:
    return {}
  return content["files"]


def _write_index_cache(cache_path: epath.Path, folder: str, records: dict[str, Any]) -> None:
  content = {"version": INDEX_FORMAT_VERSION, "folder": folder, "files": records}
  try:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so hosts sharing the cache never read half a file.
    temporary = cache_path.parent / f"{cache_path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    temporary.write_text(json.dumps(content))
    temporary.replace(cache_path)
  except OSError as error:
    logging.warning("could not write the video index cache %s: %s", cache_path, error)


# --------------------------------------------------------------------------------------
# Sources.


class ClipSource(abc.ABC):
  """A grain random-access source whose items `read_clip` turns into clips.

  Attributes:
    spec: the clip spec every `read_clip` follows.
  """

  kind: str = ""

  def __init__(self, spec: transforms.ClipSpec):
    self.spec = spec

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of items."""

  @abc.abstractmethod
  def __getitem__(self, index: int) -> Any:
    """A description of item `index` (a file, or the index itself)."""

  @abc.abstractmethod
  def read_clip(
      self,
      index: int,
      rng: np.random.Generator | None,
      *,
      position: float = 0.5,
  ) -> np.ndarray:
    """Decodes and transforms item `index` into one clip.

    Args:
      index: in [0, len(self)).
      rng: per-clip generator for the random stride, start, crop and flip; None for a
        deterministic clip (smallest stride, centre crop, no flip).
      position: where a deterministic clip sits in the video, in [0, 1].

    Returns:
      (T, crop_height, crop_width, 3) uint8.
    """

  def item_name(self, index: int) -> str:
    """What to call item `index` in a warning."""
    return f"{self.kind}[{index}]"

  @property
  def files_indexed(self) -> int:
    """Usable files behind this source (0 for sources that are not folders)."""
    return 0

  @property
  def skipped(self) -> list[SkippedFile]:
    """Files left out of the source, with reasons."""
    return []


class FolderSource(ClipSource):
  """A source whose items are the readable files of a folder (`_files`, each with a `path` or
  being one), the unreadable ones in `_skipped`; `_finish_index` warns about each skipped file
  and refuses a folder with no readable one."""

  _files: list[Any]
  _skipped: list[SkippedFile]

  def _finish_index(self, folder: str, what: str, extensions) -> None:
    for skipped in self._skipped:
      logging.warning("skipping %s: %s", skipped.file, skipped.reason)
    if not self._files:
      reasons = "".join(f"\n  {s.file}: {s.reason}" for s in self._skipped[:10])
      raise UserError(
          f"no readable {what} in {folder} (searched recursively for "
          f"{', '.join(extensions)}; {len(self._skipped)} file(s) skipped){reasons}"
      )

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> Any:
    return self._files[index]

  def item_name(self, index: int) -> str:
    item = self._files[index]
    return getattr(item, "path", item)

  @property
  def files_indexed(self) -> int:
    return len(self._files)

  @property
  def skipped(self) -> list[SkippedFile]:
    return list(self._skipped)


class VideoFolderSource(FolderSource):
  """The videos of a folder that can give a clip; item i is a `VideoFile`."""

  kind = "video_folder"

  def __init__(self, index: VideoIndex, spec: transforms.ClipSpec, *, cache_decoded: bool = False):
    super().__init__(spec)
    self._cache_decoded = cache_decoded
    self._decoded: dict[int, np.ndarray] = {}  # index -> every frame, resized (cache_decoded)
    self._files: list[VideoFile] = []
    self._skipped = list(index.skipped)
    for video in index.videos:
      if video.num_frames < spec.min_span:
        self._skipped.append(
            SkippedFile(
                video.path,
                f"too short: {video.num_frames} frames; a clip of {spec.num_frames} frames at "
                f"stride {spec.min_stride} needs {spec.min_span}",
            )
        )
      else:
        self._files.append(video)
    self._finish_index(index.folder, "video", VIDEO_EXTENSIONS)

  def read_clip(self, index, rng, *, position=0.5):
    video = self._files[index]
    frame_indices = transforms.sample_frame_indices(
        video.num_frames, self.spec, rng, position=position
    )
    size = transforms.resized_size(video.height, video.width, self.spec)
    if self._cache_decoded:
      if index not in self._decoded:  # once per process; a failure is not cached
        self._decoded[index] = decode_frames(video, np.arange(video.num_frames), size)
      frames = self._decoded[index][frame_indices]
    else:
      frames = decode_frames(video, frame_indices, size)
    return transforms.crop_and_flip(frames, self.spec, rng)

  def __getstate__(self):  # worker processes fill their own cache
    return {**self.__dict__, "_decoded": {}}


class ImageFolderSource(FolderSource):
  """The images of a folder as 1-frame clips; item i is an image path."""

  kind = "image_folder"

  def __init__(self, folder: str, spec: transforms.ClipSpec):
    super().__init__(spec)
    if spec.num_frames != 1:
      raise UserError(
          f"an image_folder source gives 1-frame clips, not {spec.num_frames}; use "
          "data.num_frames=1 (see bootvae_jax/data/config.py on mixing)"
      )
    self._files, self._skipped = [], []
    for path in find_files(folder, IMAGE_EXTENSIONS):
      try:
        if os.path.getsize(path) == 0:
          raise UnreadableFileError("empty file (0 bytes)")
        with Image.open(path) as image:  # reads the header only
          image.verify()
        self._files.append(path)
      except UnreadableFileError as error:
        self._skipped.append(SkippedFile(path, str(error)))
      except Exception as error:  # pylint: disable=broad-except
        # PIL raises many types for broken files; none of them may stop the index.
        self._skipped.append(SkippedFile(path, f"not a readable image ({error})"))
    self._finish_index(os.path.abspath(folder), "image", IMAGE_EXTENSIONS)

  def read_clip(self, index, rng, *, position=0.5):
    del position  # one frame
    with Image.open(self._files[index]) as image:
      frames = np.asarray(image.convert("RGB"))[None]
    size = transforms.resized_size(frames.shape[1], frames.shape[2], self.spec)
    return transforms.crop_and_flip(transforms.resize_frames(frames, size), self.spec, rng)


class ArrayRecordSource(ClipSource):
  """Clips prepared by `bootvae_jax.data.prepare`, read through grain's ArrayRecordDataSource;
  item i is record i over the shards in index order.

  A stored clip is a window of `num_frames` frames (at the prepare-time stride); the clip spec
  samples its own frames inside that window (so a stored 17-frame clip also gives 9-frame
  clips, or 9 frames at stride 2), resizes only when `resize_short_side` asks for another size,
  then crops and flips as for every source. The folder may be a gs:// URL: the index is read
  with etils.epath and ArrayRecord reads GCS itself.
  """

  kind = "array_record"

  def __init__(self, folder: str, spec: transforms.ClipSpec):
    super().__init__(spec)
    self._folder = str(folder)
    index = read_clips_index(self._folder)
    self.options = index["options"]
    stored_frames = int(self.options["num_frames"])
    if stored_frames < spec.min_span:
      raise UserError(
          f"{self._folder} holds clips of {stored_frames} frames; a clip of {spec.num_frames} "
          f"frames at stride {spec.min_stride} needs {spec.min_span}: prepare the corpus again "
          f"with --num_frames={spec.min_span} (or ask for shorter clips)"
      )
    shards = [shard for shard in index["shards"] if shard["num_clips"]]
    if not shards:
      raise UserError(f"{self._folder} holds no clips (see its report.json for why)")
    # `path[start:end]` read instructions: grain need not open every shard to count records.
    self._paths = [
        f"{os.path.join(self._folder, shard['file'])}[0:{shard['num_clips']}]" for shard in shards
    ]
    self._length = sum(shard["num_clips"] for shard in shards)
    self._videos = list(index["videos"])
    clips = np.asarray(index["clips"], np.int64).reshape(-1, 4)  # video, start, height, width
    self._clip_video, self._clip_start = clips[:, 0].astype(np.int32), clips[:, 1]
    self._skipped = [SkippedFile(s["file"], s["reason"]) for s in index.get("skipped", ())]
    self._data_source = None

  def _source(self):
    if self._data_source is None:
      import grain  # pylint: disable=g-import-not-at-top  (workers import it anyway)

      self._data_source = grain.sources.ArrayRecordDataSource(self._paths)
    return self._data_source

  def __getstate__(self):
    # Worker processes open their own readers.
    return {**self.__dict__, "_data_source": None}

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> tuple[str, int]:
    """(source video, its first frame) of clip `index`."""
    return self._videos[self._clip_video[index]], int(self._clip_start[index])

  def item_name(self, index: int) -> str:
    video, start = self[index]
    return f"{video} (clip from frame {start}, record {index} of {self._folder})"

  @property
  def files_indexed(self) -> int:
    return len(self._videos)

  @property
  def skipped(self) -> list[SkippedFile]:
    return list(self._skipped)

  def read_clip(self, index, rng, *, position=0.5):
    frames = decode_clip(self._source()[index])
    frame_indices = transforms.sample_frame_indices(
        frames.shape[0], self.spec, rng, position=position
    )
    size = transforms.resized_size(frames.shape[1], frames.shape[2], self.spec)
    clip = transforms.resize_frames(frames[frame_indices], size)
    return transforms.crop_and_flip(clip, self.spec, rng)


def read_clips_index(folder: str) -> dict[str, Any]:
  """The index of a prepared clip folder (local or a URL).

  Raises:
    UserError: the folder holds no finished preparation, or one of another format.
  """
  path = epath.Path(folder) / CLIPS_INDEX
  try:
    index = json.loads(path.read_text())
  except FileNotFoundError as error:
    raise UserError(
        f"{folder} is not a prepared clip folder (no {CLIPS_INDEX}); make one with "
        f"python -m bootvae_jax.data.prepare --input=VIDEOS --out={folder}, and let it finish"
    ) from error
  if index.get("format") != CLIPS_FORMAT or index.get("version") != CLIPS_FORMAT_VERSION:
    raise UserError(
        f"{path} is not a version-{CLIPS_FORMAT_VERSION} {CLIPS_FORMAT} index; prepare the "
        "corpus again with this version of bootvae_jax"
    )
  return index


class TfdsSource(ClipSource):
  """A TFDS split through `tfds.data_source`; item i is example i.

  The video feature may be a tfds `Video` (decoded to a list of frames) or a uint8 Tensor
  (T, H, W, 3) / (T, H, W, 1). The dataset must already be prepared in `data_dir` (no
  downloads at run time).
  """

  kind = "tfds"

  def __init__(
      self, name: str, split: str, *, data_dir: str, video_key: str, spec: transforms.ClipSpec
  ):
    super().__init__(spec)
    self._name, self._split, self._data_dir = name, split, data_dir or None
    self._video_key = video_key
    self._data_source = None
    self._length = len(self._source())
    if not self._length:
      raise UserError(f"TFDS {name!r} split {split!r} is empty")

  def _source(self):
    if self._data_source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy import)

      try:
        self._data_source = tfds.data_source(self._name, split=self._split, data_dir=self._data_dir)
      except Exception as error:  # pylint: disable=broad-except
        raise UserError(
            f"cannot open TFDS {self._name!r} split {self._split!r} in data_dir="
            f"{self._data_dir or 'default'} ({type(error).__name__}: {error}); prepare it "
            "there first in the array_record format (there is no network at run time)"
        ) from error
    return self._data_source

  def __getstate__(self):
    # Worker processes reopen the data source themselves.
    return {**self.__dict__, "_data_source": None}

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source()[index]

  def item_name(self, index: int) -> str:
    return f"tfds:{self._name}/{self._split}[{index}]"

  def read_clip(self, index, rng, *, position=0.5):
    example = self._source()[index]
    if self._video_key not in example:
      raise ValueError(
          f"TFDS {self._name!r} has no feature {self._video_key!r} "
          f"(features: {sorted(example)}); set data.tfds_video_key"
      )
    frames = np.asarray(
        np.stack(example[self._video_key])
        if isinstance(example[self._video_key], list)
        else example[self._video_key]
    )
    if frames.ndim == 3:
      frames = frames[..., None]
    if frames.shape[-1] == 1:
      frames = np.repeat(frames, 3, axis=-1)
    frame_indices = transforms.sample_frame_indices(
        frames.shape[0], self.spec, rng, position=position
    )
    size = transforms.resized_size(frames.shape[1], frames.shape[2], self.spec)
    clip = transforms.resize_frames(frames[frame_indices].astype(np.uint8), size)
    return transforms.crop_and_flip(clip, self.spec, rng)


class SyntheticSource(ClipSource):
  """Procedural clips at the crop size; item i is clip number `first_index + i`.

  Clip content is a pure function of (seed, clip number) (see `render_synthetic_clip`);
  the per-clip rng only decides the optional flip.
  """

  kind = "synthetic"

  def __init__(
      self,
      num_clips: int,
      spec: transforms.ClipSpec,
      *,
      seed: int,
      first_index: int = 0,
      detail: float = 1.0,
  ):
    super().__init__(spec)
    self._num_clips, self._seed, self._first_index = num_clips, seed, first_index
    self._detail = detail

  def __len__(self) -> int:
    return self._num_clips

  def __getitem__(self, index: int) -> int:
    return self._first_index + index

  def read_clip(self, index, rng, *, position=0.5):
    del position
    clip = render_synthetic_clip(
        self._seed,
        self._first_index + index,
        self.spec.num_frames,
        *self.spec.crop_size,
        detail=self._detail,
    )
    return transforms.crop_and_flip(clip, self.spec, rng)


def render_synthetic_clip(
    seed: int, index: int, num_frames: int, height: int, width: int, detail: float = 1.0
) -> np.ndarray:
  """A procedural video: textured shapes moving over a textured background.

  The camera pans and zooms, shapes translate and rotate, and the brightness flickers, so
  the clip exercises motion, scale change and global intensity change. numpy only, about a
  millisecond for 17x32x32.

  `detail` scales every spatial frequency (background gratings, stripes on the shapes) and
  divides the shapes' edge width (1 px at 1.0): at 1.0 most of a 32² clip's energy is finer
  than an 8x-spatial latent cell (an 8×8 block average scores 18.5 dB, 2×2 23 dB), which a
  small model cannot learn in minutes; 0.25 gives smooth clips of the same layout and motion.
  The same (seed, index) draws the same scene at every detail.

  Args:
    seed: dataset seed.
    index: clip number; (seed, index) fully determine the clip.
    num_frames: T.
    height: H.
    width: W.
    detail: spatial-frequency scale in (0, 1].

  Returns:
    (T, H, W, 3) uint8.
  """
  rng = np.random.default_rng((abs(int(seed)), int(index)))

  def uniform(low, high, size=None):
    # float32 draws keep every array below in float32 (float64 would double the cost).
    return np.asarray(rng.uniform(low, high, size), np.float32)

  size = np.float32(min(height, width))
  time = np.arange(num_frames, dtype=np.float32)[:, None, None]
  pixel_y = (np.arange(height, dtype=np.float32) - (height - 1) / 2)[None, :, None]
  pixel_x = (np.arange(width, dtype=np.float32) - (width - 1) / 2)[None, None, :]
  # Camera: the world point seen at a pixel moves with pan and shrinks/grows with zoom.
  zoom = np.exp(uniform(-0.025, 0.025) * time)
  pan = uniform(-0.04, 0.04, 2) * size
  world_y = pixel_y / zoom + pan[0] * time
  world_x = pixel_x / zoom + pan[1] * time

  def grating(y, x, frequency, angle, phase):
    return np.sin(frequency * (np.cos(angle) * x + np.sin(angle) * y) + phase)

  # Background: a base colour plus three coloured gratings.
  image = np.empty((num_frames, height, width, 3), np.float32)
  image[:] = uniform(60, 190, 3)
  for _ in range(3):
    frequency = uniform(0.5, 4.0) * np.float32(2 * np.pi * detail) / size
    wave = grating(world_y, world_x, frequency, uniform(0, np.pi), uniform(0, 2 * np.pi))
    image += wave[..., None] * uniform(-35, 35, 3)

  # Shapes, painted back to front with a one-pixel soft edge.
  for _ in range(int(rng.integers(2, 5))):
    centre = uniform(-0.35, 0.35, 2) * size
    velocity = uniform(-0.05, 0.05, 2) * size
    radius = uniform(0.1, 0.28) * size
    angle = uniform(-0.1, 0.1) * time  # spin
    offset_y = world_y - (centre[0] + velocity[0] * time)
    offset_x = world_x - (centre[1] + velocity[1] * time)
    cos, sin = np.cos(angle), np.sin(angle)
    along = cos * offset_x + sin * offset_y
    across = cos * offset_y - sin * offset_x
    if rng.random() < 0.5:
      distance = np.sqrt(along * along + across * across)
    else:
      distance = np.maximum(np.abs(along), np.abs(across))
    coverage = np.clip((radius - distance) * zoom * np.float32(detail) + 0.5, 0.0, 1.0)
    stripes = 0.5 + 0.5 * grating(
        across, along, uniform(2, 6) * np.float32(np.pi * detail) / radius, uniform(0, np.pi), 0.0
    )
    colour_a, colour_b = uniform(0, 255, (2, 3))
    texture = colour_b + stripes[..., None] * (colour_a - colour_b)
    image += coverage[..., None] * (texture - image)

  flicker = 1.0 + uniform(0.0, 0.15) * np.sin(
      uniform(0.2, 1.5) * time[..., None] + uniform(0, 2 * np.pi)
  )
  image *= flicker
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_source(source_config: dict[str, Any], *, split: str = "train") -> ClipSource:
  """Builds one leaf source from a resolved per-source config (`config.resolve_sources`).

  Args:
    source_config: the `config.data` fields for this source.
    split: 'train', or 'eval' for the held-out deterministic variant (eval_path /
      eval_tfds_split when set; synthetic clips numbered after the training ones; smallest
      stride, centre crop, no flip).

  Returns:
    The source.

  Raises:
    ValueError: unknown source kind, or a source without any usable item.
  """
  spec = transforms.ClipSpec.from_config(source_config)
  evaluating = split == "eval"
  if evaluating:
    spec = spec.for_eval()
  kind = source_config["source"]
  if kind == "synthetic":
    num_clips = int(source_config["synthetic_num_clips"])
    return SyntheticSource(
        num_clips,
        spec,
        seed=int(source_config["seed"]),
        first_index=num_clips if evaluating else 0,
        detail=float(source_config.get("synthetic_detail", 1.0)),
    )
  if kind in ("video_folder", "image_folder"):
    folder = (evaluating and source_config["eval_path"]) or source_config["path"]
    if not folder or not os.path.isdir(folder):
      raise UserError(
          f"data source {kind!r} needs an existing folder, got path={folder!r} "
          "(--config.data.path=/path/to/folder)"
      )
    if kind == "image_folder":
      return ImageFolderSource(folder, spec)
    index = index_video_folder(folder, cache_dir=source_config["index_cache_dir"])
    return VideoFolderSource(
        index, spec, cache_decoded=bool(source_config.get("cache_decoded", False))
    )
  if kind == "array_record":
    folder = (evaluating and source_config["eval_path"]) or source_config["path"]
    return ArrayRecordSource(folder, spec)
  if kind == "tfds":
    tfds_split = (evaluating and source_config["eval_tfds_split"]) or source_config["tfds_split"]
    return TfdsSource(
        source_config["tfds_name"],
        tfds_split,
        data_dir=source_config["tfds_data_dir"],
        video_key=source_config["tfds_video_key"],
        spec=spec,
    )
  raise UserError(f"unknown data source {kind!r}")
