"""grain pipeline: sources -> per-process shard -> batches -> global `jax.Array`s.

The dataset graph, per JAX process:

  for each source k:  MapDataset.range(len(source_k)) -> shuffle -> repeat (reshuffled every
                      epoch) -> random_map(ReadClip)   (decode + transform, uint8 clips)
  MapDataset.mix(per-source datasets, weights)       (only for source='mixture')
      = the global example stream, the same for every topology
  [start_example:]                                   (where a resumed run continues)
  batch(global_batch // process_count)
  [process_index::process_count]                     (this process's block of each batch)
  to_iter_dataset(threads) -> mp_prefetch(num_workers worker processes)

Global batch k is examples [start + k·B, start + (k+1)·B) of the stream, in that order, and
process p contributes the p-th contiguous block of it, so the global batch does not depend on
the number of processes. Every random choice is seeded from the element's position in the
stream, and batching happens before the worker processes split the work (each worker makes
whole batches, which are interleaved in order), so the batches do not depend on `num_workers`.
The position a checkpoint stores is therefore one number, the global example index
(`TrainBatches.state()`), valid for any process count, device count or batch size.

A clip that fails to decode at read time (a file that passed the index probe but is broken
further in, or changed since) is replaced by the next item of the same source, with one
warning per item and process; the number of such replacements rides along with each clip
and is summed into `TrainBatches.stats()`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from bootvae_jax.data import config as data_config_lib
from bootvae_jax.data import sources as sources_lib
from bootvae_jax.data import transforms
from bootvae_jax.core import sharding

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
    start_example: int = 0,
) -> grain.IterDataset:
  """The grain dataset of one process's local batches.

  Args:
    data_config: `config.data`.
    seed: run seed; the stream depends on it and on `data_config.seed`.
    process_index: this process's shard.
    process_count: number of shards (JAX processes).
    sources: prebuilt sources (from `make_sources`); built from the config when None.
    weights: their mixing weights.
    start_example: global index of the first example of the first batch (a resumed run's
      position); the examples are those an uninterrupted stream has there.

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
  # Slice after batching: global batch k = local batches k·n .. k·n+n-1, one per process;
  # process p's block is rows [p·b, (p+1)·b), the rows `make_mesh`'s process-major device order
  # gives its devices.
  dataset = dataset[int(start_example) :]
  dataset = dataset.batch(data_config.batch_size // process_count, drop_remainder=True)
  dataset = dataset[process_index::process_count]
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
  """Iterator of global training batches whose position is one topology-free number.

  `next(batches)` is {'video': (B, T, H, W, 3) float32 in [-1, 1]}: a global jax.Array laid
  out with NamedSharding(mesh, P(data_axes)), each process contributing its local block.

  `state()` is what checkpoints store: the global index of the next example, the global batch
  size, and the run's data counters (summed over processes). `restore(state)` rebuilds the
  grain pipeline at that example on any process count, device count or batch size, so a
  resumed run reads exactly the examples an uninterrupted one would, none twice, none skipped.

  Attributes:
    iterator: the grain DatasetIterator of this process's local batches.
    sources: the sources read.
  """

  def __init__(
      self,
      dataset_at: Callable[[int], grain.IterDataset],
      *,
      sources: Sequence[sources_lib.ClipSource],
      sharding: jax.sharding.NamedSharding,
      global_shape: tuple[int, ...],
  ):
    """`dataset_at(start_example)` builds this process's grain dataset (`build_train_dataset`)."""
    self.sources = list(sources)
    self._dataset_at = dataset_at
    self._sharding = sharding
    self._global_shape = global_shape
    self._replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    # uint8 crosses processes and the host->device copy; the [-1, 1] float conversion runs
    # on device, once per batch, keeping the sharding. The counters are summed there too, so
    # every process holds the global totals (what a checkpoint stores).
    self._ingest = jax.jit(_ingest, out_shardings=(sharding, self._replicated))
    self.iterator = None
    self.restore({"examples": 0})

  @property
  def batch_size(self) -> int:
    return self._global_shape[0]

  @property
  def examples(self) -> int:
    """Global index of the next example: examples read so far by all processes together."""
    return self._examples

  def __iter__(self) -> TrainBatches:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.iterator)
    self._examples += self.batch_size
    video, failures, source_ids = (
        jax.make_array_from_process_local_data(
            self._sharding, local[key], (self.batch_size,) + local[key].shape[1:]
        )
        for key in ("video", "read_failures", "source_id")
    )
    video, self._counters = self._ingest(video, failures, source_ids, self._counters)
    return {"video": video}

  def state(self) -> dict[str, Any]:
    """The position and counters (JSON data, equal on every process) a checkpoint stores."""
    counters = {k: np.asarray(v.addressable_data(0)).tolist() for k, v in self._counters.items()}
    return {"examples": self._examples, "batch_size": self.batch_size, **counters}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues at `state['examples']` with its counters (missing counters start at 0)."""
    if self.iterator is not None:
      self.iterator.close()
    self._examples = int(state["examples"])
    self.iterator = iter(self._dataset_at(self._examples))
    per_source = state.get("clips_per_source", ())
    if len(per_source) != len(self.sources):  # a config with other sources: count anew
      per_source = [0] * len(self.sources)
    counters = {
        "read_failures": np.asarray(state.get("read_failures", 0), np.int32),
        "clips_per_source": np.asarray(per_source, np.int32),
    }
    self._counters = {
        k: jax.make_array_from_callback(v.shape, self._replicated, lambda index, v=v: v[index])
        for k, v in counters.items()
    }

  @property
  def skipped_files(self) -> list[sources_lib.SkippedFile]:
    """Files left out at indexing, over all sources."""
    return [skipped for source in self.sources for skipped in source.skipped]

  def stats(self) -> dict[str, float]:
    """Counters for the metric writer, over all processes and since the run began (a resumed
    run continues them from its checkpoint)."""
    state = self.state()
    stats = {
        "data/files_indexed": float(sum(source.files_indexed for source in self.sources)),
        "data/files_skipped": float(len(self.skipped_files)),
        "data/read_failures": float(state["read_failures"]),
        "data/clips": float(state["examples"]),
    }
    if len(self.sources) > 1:
      for source_id, count in enumerate(state["clips_per_source"]):
        stats[f"data/clips_source{source_id}_{self.sources[source_id].kind}"] = float(count)
    return stats

  def close(self) -> None:
    """Stops worker processes."""
    self.iterator.close()


def _ingest(video, failures, source_ids, counters):
  """(uint8 video, per-clip read failures and source ids, counters) -> ([-1, 1] video,
  counters + this batch's failures and clips per source)."""
  num_sources = counters["clips_per_source"].shape[0]
  per_source = (source_ids[:, None] == np.arange(num_sources)[None, :]).sum(0)
  return transforms.to_unit_range(video), {
      "read_failures": counters["read_failures"] + failures.sum().astype(np.int32),
      "clips_per_source": counters["clips_per_source"] + per_source.astype(np.int32),
  }


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
  batch_sharding = sharding.batch_sharding(mesh, data_axes)
  shards = int(np.prod([mesh.shape[axis] for axis in batch_sharding.spec[0] or ()]))
  if data_config.batch_size % shards:
    raise ValueError(
        f"data.batch_size={data_config.batch_size} does not split over the {shards} "
        f"data-parallel devices of mesh axes {tuple(batch_sharding.spec[0] or ())}; use a "
        f"multiple of {shards}"
    )
  sources, weights = make_sources(data_config)
  dataset_at = functools.partial(
      build_train_dataset,
      data_config,
      seed=seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      sources=sources,
      weights=weights,
  )
  crop_height, crop_width = data_config.crop_size
  global_shape = (data_config.batch_size, data_config.num_frames, crop_height, crop_width, 3)
  return TrainBatches(
      lambda start: dataset_at(start_example=start),
      sources=sources,
      sharding=batch_sharding,
      global_shape=global_shape,
  )


def make_eval_clips(data_config: Any, *, num_clips: int | None = None) -> np.ndarray:
  """Deterministic held-out clips: smallest stride, centre crop, no flip.

  Clip i comes from source i % S (S sources), item j = i // S of it, cycling over the items;
  the k-th visit of an item takes its clip at the k-th of evenly spread positions in time.
  A clip equal to an earlier one is dropped (logged), so no window weighs twice in a mean: an
  item with room for fewer windows than visits (a short video, a large frame stride) or an
  unreadable item replaced by its neighbour would repeat one.

  Args:
    data_config: `config.data` (eval_path / eval_tfds_split select held-out data; synthetic
      clips are numbered after the training ones).
    num_clips: defaults to data_config.eval_num_clips.

  Returns:
    (N, T, H, W, 3) float32 in [-1, 1], N <= num_clips distinct clips.
  """
  data_config_lib.validate(data_config, temporal_factor=1, spatial_factor=1)
  num_clips = int(num_clips or data_config.eval_num_clips)
  sources, _ = make_sources(data_config, split="eval")
  clips_per_source = -(-num_clips // len(sources))
  clips, seen = [], set()
  for clip_number in range(num_clips):
    source = sources[clip_number % len(sources)]
    item = clip_number // len(sources)
    visits_per_item = -(-clips_per_source // len(source))
    position = transforms.spread_positions(visits_per_item)[item // len(source)]
    clip, _, _ = read_clip_or_next(source, item % len(source), None, position=position)
    if (key := hash(clip.tobytes())) not in seen:
      seen.add(key)
      clips.append(clip)
  if len(clips) < num_clips:
    logging.warning(
        "%d of %d eval clips repeat an earlier clip and are dropped: %d distinct clips of %d"
        " frames (frame_stride %s) remain",
        num_clips - len(clips),
        num_clips,
        len(clips),
        data_config.num_frames,
        data_config.get("frame_stride", 1),
    )
  return transforms.to_unit_range(np.stack(clips))
