"""The `config.data` subtree: defaults, per-source resolution and validation.

Every experiment config carries `config.data = default_config()` (then overrides), so any
config can be pointed at a folder of videos from the command line:

  --config.data.source=video_folder --config.data.path=/path/to/videos

Sources: 'synthetic' (procedural, needs nothing), 'video_folder' (PyAV), 'array_record'
(clips prepared once by `python -m bootvae_jax.data.prepare`: the pod-scale path), 'tfds'
(`tfds.data_source`), 'image_folder' (1-frame clips) and 'mixture' (several of those,
weighted, listed in `data.mixture`).

Mixing rule: a batch has one clip shape, so the clip shape (`num_frames`, `crop_size`) is set
once at the top level and mixture entries may not override it. An image is a 1-frame clip and
is never repeated to fake motion, so an image source needs `num_frames=1`: images mix with
videos only in a `num_frames=1` config (a valid causal length, 1 + r*0). Train image stages and
video stages as separate configs.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from bootvae_jax.cli import UserError

# The model's shape rules, without model code (grain workers import this module).
from bootvae_jax.core import frames

LEAF_SOURCES = ("synthetic", "video_folder", "array_record", "tfds", "image_folder")
SOURCES = LEAF_SOURCES + ("mixture",)
FOLDER_SOURCES = ("video_folder", "image_folder")

# Fields a mixture entry may set for its own source (plus `weight`). Everything else (clip
# shape, batching, workers, seed) is shared by the whole mixture.
PER_SOURCE_FIELDS = (
    "source",
    "path",
    "eval_path",
    "tfds_name",
    "tfds_split",
    "eval_tfds_split",
    "tfds_video_key",
    "tfds_data_dir",
    "frame_stride",
    "resize_short_side",
    "random_crop",
    "random_flip",
    "synthetic_num_clips",
    "synthetic_detail",
    "index_cache_dir",
    "cache_decoded",
)


def default_config() -> ml_collections.ConfigDict:
  """Returns the `config.data` subtree with every field present."""
  config = ml_collections.ConfigDict()
  config.source = "synthetic"
  # Folder of videos / images (searched recursively) for the folder sources; for
  # 'array_record', the folder `bootvae_jax.data.prepare --out` wrote (may be gs://).
  config.path = ""
  # Held-out folder for `make_eval_clips`; '' evaluates on `path`.
  config.eval_path = ""
  config.tfds_name = ""
  config.tfds_split = "train"
  # '' evaluates on `tfds_split`.
  config.eval_tfds_split = ""
  # Feature holding the frames: a tfds Video or a uint8 (T, H, W, 3) Tensor.
  config.tfds_video_key = "video"
  # '' = TFDS's default data_dir.
  config.tfds_data_dir = ""

  # Clip shape: T = 1 + r*k for a model with temporal factor r.
  config.num_frames = 17
  # An int, or (min, max) for a random stride per clip. Typed `object` so both the config
  # files and `--config.data.frame_stride='(1, 4)'` can switch between the two forms.
  config.frame_stride = ml_collections.FieldReference(1, field_type=object)
  # Short side after resize; 0 = keep the decoded size (scaled up only if smaller than crop).
  config.resize_short_side = 0
  config.crop_size = (32, 32)
  config.random_crop = True
  config.random_flip = False

  # Global batch size over all JAX processes.
  config.batch_size = 8
  # grain worker processes per JAX process (0 = decode in the main process).
  config.num_workers = 0
  # Decoding threads per process, and batches each process buffers ahead.
  config.read_threads = 2
  config.prefetch_buffer_size = 2
  config.shuffle = True
  config.seed = 0

  # For source='mixture': entries like dict(source='video_folder', path=..., weight=0.7).
  config.mixture = ()
  config.eval_num_clips = 8
  # Where the video index is cached; '' = ~/.cache/bootvae_jax.
  config.index_cache_dir = ""
  # video_folder: decode every video once (at its resized size) and keep the frames in memory,
  # so clips are slices instead of seeks + decodes. For small data sets (each worker process
  # holds its own copy): ~H·W·3 bytes per frame.
  config.cache_decoded = False
  # Number of distinct clips in the synthetic source.
  config.synthetic_num_clips = 100_000
  # Spatial-frequency scale of the synthetic clips in (0, 1] (`sources.render_synthetic_clip`):
  # 1.0 has detail finer than an 8x-spatial latent cell; lower is smoother.
  config.synthetic_detail = 1.0
  return config


def _as_dict(config: Any) -> dict[str, Any]:
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return dict(config)


def resolve_sources(data_config: Any) -> list[tuple[dict[str, Any], float]]:
  """Per-source configs with their mixing weights.

  Args:
    data_config: `config.data`.

  Returns:
    [(source_config, weight)]: one entry with weight 1.0 for a leaf source; for a mixture,
    each entry's fields laid over the top-level ones (minus `weight` and `mixture`).
  """
  base = _as_dict(data_config)
  base.pop("mixture", None)
  if base["source"] != "mixture":
    return [(base, 1.0)]
  resolved = []
  for entry in data_config.mixture:
    entry = _as_dict(entry)
    weight = float(entry.pop("weight", 1.0))
    resolved.append(({**base, **entry}, weight))
  return resolved


def validate(data_config: Any, *, temporal_factor: int, spatial_factor: int) -> None:
  """Checks `config.data` against itself, the model's factors and the machine.

  Args:
    data_config: `config.data`.
    temporal_factor: the model's temporal compression r (clips need 1 + r*k frames).
    spatial_factor: the model's spatial compression (crop sides must be multiples of it).

  Raises:
    UserError: listing every problem found, each with what to change.
  """
  problems = []
  config = _as_dict(data_config)
  source = config["source"]
  if source not in SOURCES:
    problems.append(f"data.source={source!r} is unknown; use one of {', '.join(SOURCES)}")

  num_frames = config["num_frames"]
  if not isinstance(num_frames, int) or num_frames < 1:
    problems.append(f"data.num_frames={num_frames!r} must be a positive int")
  elif frames.frame_rule_error(num_frames, temporal_factor) is not None:
    problems.append(
        f"data.num_frames={num_frames}; " + frames.frame_rule(num_frames, temporal_factor)
    )

  crop = tuple(config["crop_size"])
  if len(crop) != 2 or any(not isinstance(side, int) or side < 1 for side in crop):
    problems.append(f"data.crop_size={crop!r} must be (height, width), positive ints")
  elif (
      message := frames.frame_size_error(
          *crop, spatial_factor, what="data.crop_size=", size="({}, {})"
      )
  ) is not None:
    problems.append(message)

  batch_size = config["batch_size"]
  if not isinstance(batch_size, int) or batch_size < 1:
    problems.append(f"data.batch_size={batch_size!r} must be a positive int")
  else:
    import jax  # pylint: disable=g-import-not-at-top  (keeps this module light for workers)

    process_count = jax.process_count()
    if batch_size % process_count:
      problems.append(
          f"data.batch_size={batch_size} is the global batch; it must be divisible by the "
          f"{process_count} JAX processes"
      )
  for name in ("num_workers", "read_threads", "prefetch_buffer_size"):
    if not isinstance(config[name], int) or config[name] < 0:
      problems.append(f"data.{name}={config[name]!r} must be an int >= 0")
  for name in ("eval_num_clips", "synthetic_num_clips"):
    if not isinstance(config[name], int) or config[name] < 1:
      problems.append(f"data.{name}={config[name]!r} must be a positive int")
  if not 0 < config["synthetic_detail"] <= 1:
    problems.append(f"data.synthetic_detail={config['synthetic_detail']!r} must be in (0, 1]")

  if source == "mixture":
    problems.extend(_mixture_problems(data_config))
  if source in SOURCES:
    for index, (source_config, _) in enumerate(resolve_sources(data_config)):
      where = f"data.mixture[{index}]." if source == "mixture" else "data."
      problems.extend(_source_problems(source_config, where, num_frames))
  if problems:
    raise UserError("invalid data config:\n  " + "\n  ".join(problems))


def _mixture_problems(data_config: Any) -> list[str]:
  entries = list(data_config.mixture)
  if not entries:
    return [
        "data.source='mixture' needs a non-empty data.mixture list of "
        "dict(source=..., path=..., weight=...)"
    ]
  problems = []
  for index, entry in enumerate(entries):
    entry = _as_dict(entry)
    unknown = sorted(set(entry) - set(PER_SOURCE_FIELDS) - {"weight"})
    if unknown:
      shared = [key for key in unknown if key in ("num_frames", "crop_size")]
      hint = (
          " (the clip shape is shared: set data.num_frames / data.crop_size once)"
          if shared
          else f"; allowed: weight, {', '.join(PER_SOURCE_FIELDS)}"
      )
      problems.append(f"data.mixture[{index}] sets {', '.join(unknown)}{hint}")
    if entry.get("source") not in LEAF_SOURCES:
      problems.append(
          f"data.mixture[{index}].source={entry.get('source')!r}; use one of "
          f"{', '.join(LEAF_SOURCES)}"
      )
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
      problems.append(f"data.mixture[{index}].weight={weight!r} must be > 0")
  return problems


def _source_problems(config: dict[str, Any], where: str, num_frames: Any) -> list[str]:
  """Problems of one resolved leaf source; `where` prefixes field names in messages."""
  problems = []
  source = config["source"]
  stride = config["frame_stride"]
  if isinstance(stride, int):
    if stride < 1:
      problems.append(f"{where}frame_stride={stride} must be >= 1")
  elif (
      not isinstance(stride, (tuple, list))
      or len(stride) != 2
      or not all(isinstance(s, int) for s in stride)
      or not 1 <= stride[0] <= stride[1]
  ):
    problems.append(
        f"{where}frame_stride={stride!r} must be an int >= 1 or (min, max) with " "1 <= min <= max"
    )

  short_side = config["resize_short_side"]
  crop = tuple(config["crop_size"])
  if not isinstance(short_side, int) or short_side < 0:
    problems.append(f"{where}resize_short_side={short_side!r} must be an int >= 0")
  elif 0 < short_side < max(crop):
    problems.append(
        f"{where}resize_short_side={short_side} is smaller than data.crop_size={crop}; "
        f"use at least {max(crop)} (or 0 to keep the decoded size)"
    )

  if source in FOLDER_SOURCES:
    problems.extend(_folder_problems(config["path"], f"{where}path", source))
    if config["eval_path"]:
      problems.extend(_folder_problems(config["eval_path"], f"{where}eval_path", source))
  if source == "array_record":
    problems.extend(_prepared_problems(config["path"], f"{where}path"))
    if config["eval_path"]:
      problems.extend(_prepared_problems(config["eval_path"], f"{where}eval_path"))
  if source == "tfds" and not config["tfds_name"]:
    problems.append(f"{where}tfds_name is empty; name the TFDS dataset (e.g. 'ucf101')")
  if source == "image_folder" and num_frames != 1:
    problems.append(
        f"{where}source='image_folder' gives 1-frame clips but data.num_frames={num_frames}; "
        "a batch has one clip shape and images are not repeated into fake videos, so train "
        "images with a num_frames=1 config (or drop the image source)"
    )
  return problems


def _folder_problems(path: str, name: str, source: str) -> list[str]:
  if not path:
    return [
        f"{name} is empty; source={source!r} needs a folder "
        f"(--config.data.path=/path/to/folder)"
    ]
  if not os.path.isdir(path):
    return [f"{name}={path!r} is not an existing folder"]
  if not os.access(path, os.R_OK | os.X_OK):
    return [f"{name}={path!r} is not readable by this user"]
  return []


def _prepared_problems(path: str, name: str) -> list[str]:
  """A prepared clip folder: local ones are checked here, URLs when the source opens them."""
  if not path:
    return [
        f"{name} is empty; source='array_record' needs the folder written by "
        "python -m bootvae_jax.data.prepare --out=DIR (--config.data.path=DIR)"
    ]
  if "://" in path:
    return []
  if not os.path.isfile(os.path.join(path, "index.json")):
    return [
        f"{name}={path!r} is not a prepared clip folder (no index.json); make one with "
        f"python -m bootvae_jax.data.prepare --input=VIDEOS --out={path}, and let it finish"
    ]
  return []
