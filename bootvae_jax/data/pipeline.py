"""grain pipeline: sources -> per-process shard -> batches -> global `jax.Array`s.

The dataset graph, per JAX process:

  for each source k:  MapDataset.range(len(source_k)) -> shuffle -> repeat (reshuffled every
                      epoch) -> random_map(ReadClip)   (decode + transform, uint8 clips)
  MapDataset.mix(per-source datasets, weights)       (only for source='mixture')
  [process_index::process_count]                     (this process's disjoint shard)
  batch(global_batch // process_count)
  to_iter_dataset(threads) -> mp_prefetch(num_workers worker processes)

Every random choice is seeded from the element's position in that graph, and batching
happens before the worker processes split the work (each worker makes whole batches, which
are interleaved in order), so the batches do not depend on `num_workers` and the grain
iterator state (saved in the orbax checkpoint) resumes the exact stream.

A clip that fails to decode at read time (a file that passed the index probe but is broken
further in, or changed since) is replaced by the next item of the same source, with one
warning per item and process; the number of such replacements rides along with each clip
and is summed into `TrainBatches.stats()`.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from bootvae_jax.data import config as data_config_lib
from bootvae_jax.data import sources as sources_lib
from bootvae_jax.data import transforms
from bootvae_jax.training import partitioning

# A source whose next this-many items all fail is broken beyond skipping: stop with an error.
MAX_READ_ATTEMPTS = 16


class ReadClip(grain.transforms.RandomMap):
  """grain random map: source index -> clip, replacing unreadable items by the next one."""

  def __init__(self, source: sources_lib.ClipSource, source_id: int):
    self._source = source
    self._source_id = source_id
    self._warned: set[int] = set()

  def random_map(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Reads item `element` (or a replacement).

    Returns:
      {'video': (T, H, W, 3) uint8, 'source_id': int32, 'index': int64 (the item actually
      read), 'read_failures': int32 (items tried and failed before it)}.
    """
    video, index, failures = read_clip_or_next(self._source, int(element), rng, warned=self._warned)
    return {
        "video": video,
        "source_id": np.int32(self._source_id),
        "index": np.int64(index),
        "read_failures": np.int32(failures),
    }


def read_clip_or_next(
    source: sources_lib.ClipSource,
    index: int,
    rng: np.random.Generator | None,
    *,
    position: float = 0.5,
    warned: set[int] | None = None,
) -> tuple[np.ndarray, int, int]:
  """`source.read_clip(index)`, falling back deterministically to index+1, index+2, ...

  Returns:
    (clip, index read, number of failed attempts before it).

  Raises:
    RuntimeError: MAX_READ_ATTEMPTS consecutive items failed.
  """
  attempts = min(MAX_READ_ATTEMPTS, len(source))
  for attempt in range(attempts):
    candidate = (index + attempt) % len(source)
    try:
      return source.read_clip(candidate, rng, position=position), candidate, attempt
    except Exception as error:  # pylint: disable=broad-except
      # Any failure of one file (codec, I/O, too short) costs that clip, never the run.
      if warned is None or candidate not in warned:
        logging.warning(
            "skipping unreadable %s (using the next item): %s: %s",
            source.item_name(candidate),
            type(error).__name__,
            error,
        )
        if warned is not None:
          warned.add(candidate)
      last_error = error
  raise RuntimeError(
      f"{attempts} consecutive items of the {source.kind} source failed to read, from "
      f"{source.item_name(index % len(source))}; last error: {last_error}"
  ) from last_error


def make_sources(
    data_config: Any,
    *,
    split: str = "train",
) -> tuple[list[sources_lib.ClipSource], list[float]]:
  """Builds every source of `config.data` (one, or the mixture's) and their weights."""
  resolved = data_config_lib.resolve_sources(data_config)
  return (
      [sources_lib.make_source(config, split=split) for config, _ in resolved],
      [weight for _, weight in resolved],
  )


def build_train_dataset(
    data_config: Any,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    sources: Sequence[sources_lib.ClipSource] | None = None,
    weights: Sequence[float] | None = None,
) -> grain.IterDataset:
  """The grain dataset of one process's local batches.

  Args:
    data_config: `config.data`.
    seed: run seed; the stream depends on it and on `data_config.seed`.
    process_index: this process's shard.
    process_count: number of shards (JAX processes).
    sources: prebuilt sources (from `make_sources`); built from the config when None.
    weights: their mixing weights.

  Returns:
    IterDataset of {'video': (B_local, T, H, W, 3) uint8, 'source_id': (B_local,) int32,
    'index': (B_local,) int64, 'read_failures': (B_local,) int32}, B_local =
    batch_size // process_count. Infinite.
  """
  if sources is None:
    sources, weights = make_sources(data_config)
  if data_config.batch_size % process_count:
    raise ValueError(
        f"data.batch_size={data_config.batch_size} (global) is not divisible by "
        f"the {process_count} JAX processes"
    )
  seeds = np.random.SeedSequence([int(seed), int(data_config.seed)]).generate_state(
      2 * len(sources)
  )
  per_source = []
  for source_id, source in enumerate(sources):
    dataset = grain.MapDataset.range(len(source))
    if data_config.shuffle:
      dataset = dataset.shuffle(seed=int(seeds[2 * source_id]))
    dataset = dataset.repeat()
    dataset = dataset.random_map(ReadClip(source, source_id), seed=int(seeds[2 * source_id + 1]))
    per_source.append(dataset)
  if len(per_source) == 1:
    dataset = per_source[0]
  else:
    dataset = grain.MapDataset.mix(per_source, weights=list(weights))
  dataset = dataset[process_index::process_count]
  dataset = dataset.batch(data_config.batch_size // process_count, drop_remainder=True)
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(
          num_threads=data_config.read_threads,
          prefetch_buffer_size=data_config.prefetch_buffer_size,
      )
  )
  if data_config.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read its absl flags; outside absl.app (tests, notebooks)
      # nothing parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=data_config.num_workers)
    )
  return iter_dataset


class TrainBatches:
  """Iterator of global training batches, checkpointable with orbax.

  `next(batches)` is {'video': (B, T, H, W, 3) float32 in [-1, 1]}: a global jax.Array laid
  out with NamedSharding(mesh, P(data_axes)), each process contributing its local shard.

  Attributes:
    iterator: the grain DatasetIterator behind it (its state goes into checkpoints).
    sources: the sources read.
  """

  def __init__(
      self,
      dataset: grain.IterDataset,
      *,
      sources: Sequence[sources_lib.ClipSource],
      sharding: jax.sharding.NamedSharding,
      global_shape: tuple[int, ...],
  ):
    self.sources = list(sources)
    self.iterator = iter(dataset)
    self._sharding = sharding
    self._global_shape = global_shape
    # uint8 crosses processes and the host->device copy; the [-1, 1] float conversion runs
    # on device, once per batch, keeping the sharding.
    self._to_unit_range = jax.jit(transforms.to_unit_range, out_shardings=sharding)
    self._read_failures = 0
    self._clips = 0
    self._clips_per_source = np.zeros(len(self.sources), np.int64)

  def __iter__(self) -> TrainBatches:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.iterator)
    self._read_failures += int(local["read_failures"].sum())
    self._clips += len(local["video"])
    self._clips_per_source += np.bincount(local["source_id"], minlength=len(self.sources))
    video = jax.make_array_from_process_local_data(
        self._sharding, local["video"], self._global_shape
    )
    return {"video": self._to_unit_range(video)}

  def checkpoint_args_save(self) -> Any:
    """orbax argument saving the iterator state (item 'data' of the trainer's composite)."""
    return grain.checkpoint.CheckpointSave(self.iterator)

  def checkpoint_args_restore(self) -> Any:
    """orbax argument restoring the iterator state in place."""
    return grain.checkpoint.CheckpointRestore(self.iterator)

  @property
  def skipped_files(self) -> list[sources_lib.SkippedFile]:
    """Files left out at indexing, over all sources."""
    return [skipped for source in self.sources for skipped in source.skipped]

  def stats(self) -> dict[str, float]:
    """Counters for the metric writer; read failures count since this process started."""
    stats = {
        "data/files_indexed": float(sum(source.files_indexed for source in self.sources)),
        "data/files_skipped": float(len(self.skipped_files)),
        "data/read_failures": float(self._read_failures),
        "data/clips": float(self._clips),
    }
    if len(self.sources) > 1:
      for source_id, count in enumerate(self._clips_per_source):
        stats[f"data/clips_source{source_id}_{self.sources[source_id].kind}"] = float(count)
    return stats

  def close(self) -> None:
    """Stops worker processes."""
    self.iterator.close()


def make_train_batches(
    data_config: Any,
    *,
    mesh: jax.sharding.Mesh,
    data_axes: Sequence[str] = ("data", "fsdp"),
    seed: int,
) -> TrainBatches:
  """Training batches for this JAX process, assembled into global arrays.

  Args:
    data_config: `config.data` (validated here against itself; the trainer validates it
      against the model's factors with `config.validate`).
    mesh: the training mesh.
    data_axes: mesh axes the batch dimension is split over.
    seed: run seed (combined with data_config.seed).

  Returns:
    TrainBatches yielding {'video': (batch_size, T, H, W, 3) float32 in [-1, 1]}.

  Raises:
    ValueError: an invalid config, a batch that does not split over the mesh, or a folder
      without any readable file.
  """
  data_config_lib.validate(data_config, temporal_factor=1, spatial_factor=1)
  sharding = partitioning.batch_sharding(mesh, data_axes)
  shards = int(np.prod([mesh.shape[axis] for axis in sharding.spec[0] or ()]))
  if data_config.batch_size % shards:
    raise ValueError(
        f"data.batch_size={data_config.batch_size} does not split over the {shards} "
        f"data-parallel devices of mesh axes {tuple(sharding.spec[0] or ())}; use a "
        f"multiple of {shards}"
    )
  sources, weights = make_sources(data_config)
  dataset = build_train_dataset(
      data_config,
      seed=seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      sources=sources,
      weights=weights,
  )
  crop_height, crop_width = data_config.crop_size
  global_shape = (data_config.batch_size, data_config.num_frames, crop_height, crop_width, 3)
  return TrainBatches(dataset, sources=sources, sharding=sharding, global_shape=global_shape)


def make_eval_clips(data_config: Any, *, num_clips: int | None = None) -> np.ndarray:
  """Deterministic held-out clips: smallest stride, centre crop, no flip.

  Clip i comes from source i % S (S sources), item j = i // S of it, cycling over the items;
  the k-th visit of an item takes its clip at the k-th of evenly spread positions in time.

  Args:
    data_config: `config.data` (eval_path / eval_tfds_split select held-out data; synthetic
      clips are numbered after the training ones).
    num_clips: defaults to data_config.eval_num_clips.

  Returns:
    (N, T, H, W, 3) float32 in [-1, 1].
  """
  data_config_lib.validate(data_config, temporal_factor=1, spatial_factor=1)
  num_clips = int(num_clips or data_config.eval_num_clips)
  sources, _ = make_sources(data_config, split="eval")
  clips_per_source = -(-num_clips // len(sources))
  clips = []
  for clip_number in range(num_clips):
    source = sources[clip_number % len(sources)]
    item = clip_number // len(sources)
    visits_per_item = -(-clips_per_source // len(source))
    position = transforms.spread_positions(visits_per_item)[item // len(source)]
    clip, _, _ = read_clip_or_next(source, item % len(source), None, position=position)
    clips.append(clip)
  return transforms.to_unit_range(np.stack(clips))
