"""Long videos in chunks: ProMAG's cross-faded chunks and OD-VAE / CV-VAE temporal tiling.

Two ways to run a causal video autoencoder over a video of any length with device memory
bounded by one chunk:

* Cross-fade (ProMAG's long-video recipe: 17-frame chunks overlapping by 4 frames, decoded
  with a linear cross-fade over the overlap). Chunks of `chunk_frames = 1 + r·k` frames start
  every `chunk_frames - overlap_frames` frames; each is encoded (posterior mean) and decoded
  on its own; the overlapping frames of consecutive chunks are blended in pixel space with
  weights ramping linearly from the earlier chunk to the later one. Any T ≥ 1: the last chunk
  is padded by replicating the last frame and its padding is trimmed.

      recon = reconstruct_long_video(model, video)            # (T, H, W, C) -> (T, H, W, C)

* Tiling (the released OD-VAE / CV-VAE behaviour, `tiled_encode` / `tiled_decode`): chunks of
  `1 + r·m` frames overlapping by one frame, each later chunk's first latent dropped; decoding
  likewise with latent chunks, each later chunk's first frame dropped. Matches the official
  outputs (fixtures in tests/fixtures).

Every cross-fade chunk has the same shape, so the per-chunk function compiles once
(`ChunkCodec`; pass one codec to several calls to reuse its compilations). Neither scheme
equals the model on the whole clip: each chunk starts afresh (its first frame is encoded like
an image) and clip-wide norms see only the chunk. A truly causal model (per-frame norms)
streams exactly with the causal-conv cache instead.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import itertools
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from bootvae_jax.cli import UserError
from bootvae_jax.core import sharding
from bootvae_jax.models import streaming
from bootvae_jax.models.autoencoder import DiagonalGaussian
from bootvae_jax.models.autoencoder import frame_rule_error
from bootvae_jax.models.autoencoder import frame_size_error
from bootvae_jax.models.autoencoder import valid_frame_counts

# ----------------------------------------------------------------------------------------------
# The per-chunk functions, jitted once per chunk shape.


@functools.cache
def _malloc_trim():
  """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
  except (OSError, AttributeError):
    return None


def _to_host(*arrays) -> tuple[np.ndarray, ...]:
  """The arrays as numpy, then freed heap pages handed back to the OS.

  XLA's CPU threads allocate each chunk's buffers from several glibc arenas, and freed chunks
  leave holes that later allocations do not refill: without the trim a long stream's RSS
  creeps up (measured at 128², 513 frames: 808 → 908 MB over 24 chunks; trimmed, 509-536 MB
  flat; `MALLOC_ARENA_MAX=1` flattens it too). One trim per chunk costs about a millisecond.
  """
  out = tuple(np.asarray(a) for a in arrays)
  if (trim := _malloc_trim()) is not None:
    trim(0)
  return out


class ChunkCodec:
  """A model's encode / decode / reconstruct for one chunk, each jitted once per input shape.

  The parameters are taken when the codec is built (later changes to the model are not seen).
  `traces[name]` counts how often each function was traced: once per distinct chunk shape.
  The `*_step` methods run one chunk of a stream (`inference/streaming.py`).

  Args:
    model: a `VideoAutoencoder` (or any nnx module with `encode(x) -> DiagonalGaussian`,
      `decode(z)`, `temporal_factor` and `spatial_factor`).
    mesh: a `sharding.make_mesh` mesh (e.g. `spatial.spatial_mesh()`, every device on
      `spatial`): inputs and every conv output are split as `rules` say (the default: height
      over `spatial`, batch over the data axes); parameters are replicated. None: the
      default device.
    rules: the sharding rules (`config.sharding_rules`); default `sharding.DEFAULT_RULES`.
  """

  def __init__(
      self, model: nnx.Module, mesh: Mesh | None = None, rules: sharding.Rules | None = None
  ):
    self.temporal_factor = int(model.temporal_factor)
    self.spatial_factor = int(model.spatial_factor)
    self.mesh = mesh
    self.rules = tuple(sharding.DEFAULT_RULES if rules is None else rules)
    # Stream properties are read from the model once (`inference/streaming.py`).
    self.stream_blocker = streaming.stream_blocker(model)
    self.encoder_looks_ahead = streaming.looks_ahead(getattr(model, "encoder", model))
    self.decoder_looks_ahead = streaming.looks_ahead(getattr(model, "decoder", model))
    self.graphdef, self.state = nnx.split(model)
    if mesh is not None:
      self.state = jax.device_put(self.state, sharding.replicated(mesh))
    self.traces: collections.Counter = collections.Counter()
    # The state is an argument, not a closed-over constant: weights are not baked into the HLO.
    self._encode = jax.jit(self._encode_fn)
    self._decode = jax.jit(self._decode_fn)
    self._reconstruct = jax.jit(self._reconstruct_fn)
    self._encode_step = jax.jit(self._encode_step_fn, static_argnames="last")
    self._decode_step = jax.jit(self._decode_step_fn, static_argnames="last")
    self._reconstruct_step = jax.jit(self._reconstruct_step_fn)

  def _encode_fn(self, state, x):
    self.traces["encode"] += 1
    posterior = nnx.merge(self.graphdef, state).encode(x)
    return posterior.mean, posterior.logvar

  def _decode_fn(self, state, z):
    self.traces["decode"] += 1
    return nnx.merge(self.graphdef, state).decode(z)

  def _reconstruct_fn(self, state, x):
    self.traces["reconstruct"] += 1
    model = nnx.merge(self.graphdef, state)
    return model.decode(model.encode(x).mean)

  def _encode_step_fn(self, state, states, x, last):
    self.traces["encode_step"] += 1
    with streaming.streaming(states, last=last) as stream:
      posterior = nnx.merge(self.graphdef, state).encode(x)
    return posterior.mean, posterior.logvar, stream.states

  def _decode_step_fn(self, state, states, z, last):
    self.traces["decode_step"] += 1
    with streaming.streaming(states, last=last) as stream:
      video = nnx.merge(self.graphdef, state).decode(z)
    return video, stream.states

  def _reconstruct_step_fn(self, state, states, x):
    self.traces["reconstruct_step"] += 1
    with streaming.streaming(states) as stream:
      model = nnx.merge(self.graphdef, state)
      video = model.decode(model.encode(x).mean)
    return video, stream.states

  def _context(self):
    """Tracing inside the mesh and its rules lets the model's `sharding.constrain` see them."""
    if self.mesh is None:
      return contextlib.nullcontext()
    return sharding.use_mesh(self.mesh, self.rules)

  def _put(self, x) -> jax.Array | np.ndarray:
    """x: (B, T, H, W, C) as float32, split as the rules say when there is a mesh."""
    x = np.asarray(x, np.float32)
    if self.mesh is None:
      return x
    return jax.device_put(
        x, sharding.named_sharding(self.mesh, sharding.VIDEO_AXES, x.shape, self.rules)
    )

  # Results come back to the host at once, so device memory holds one chunk at a time.
  def encode(self, x: np.ndarray) -> DiagonalGaussian:
    """x: (B, 1+r·k, H, W, C) → posterior with numpy (B, 1+k, H/s, W/s, C_z) mean/logvar."""
    with self._context():
      mean, logvar = self._encode(self.state, self._put(x))
    return DiagonalGaussian(*_to_host(mean, logvar))

  def decode(self, z: np.ndarray) -> np.ndarray:
    """z: (B, 1+k, H/s, W/s, C_z) → (B, 1+r·k, H, W, C)."""
    with self._context():
      return _to_host(self._decode(self.state, self._put(z)))[0]

  def reconstruct(self, x: np.ndarray) -> np.ndarray:
    """decode(encode(x).mean), fused in one compiled function: (B, 1+r·k, H, W, C)."""
    with self._context():
      return _to_host(self._reconstruct(self.state, self._put(x)))[0]

  def encode_step(
      self, x: np.ndarray, states: Any, *, last: bool = False
  ) -> tuple[DiagonalGaussian, Any]:
    """One chunk of a stream: x (B, t, H, W, C), `states` the previous step's (None for the
    first chunk) → (numpy posterior of this chunk's latent frames, states for the next step,
    left on the device). `last` flushes frames held by ops that look ahead."""
    with self._context():
      mean, logvar, states = self._encode_step(self.state, states, self._put(x), last=last)
    return DiagonalGaussian(*_to_host(mean, logvar)), states

  def decode_step(
      self, z: np.ndarray, states: Any, *, last: bool = False
  ) -> tuple[np.ndarray, Any]:
    """One chunk of a stream: z (B, k, h, w, C_z) → (numpy frames, states for the next step)."""
    with self._context():
      video, states = self._decode_step(self.state, states, self._put(z), last=last)
    return _to_host(video)[0], states

  def reconstruct_step(self, x: np.ndarray, states: Any) -> tuple[np.ndarray, Any]:
    """decode(encode(x).mean) for one chunk of a stream of a model that never looks ahead
    (each chunk's frames come out with it), fused in one compiled function."""
    with self._context():
      video, states = self._reconstruct_step(self.state, states, self._put(x))
    return _to_host(video)[0], states


def as_codec(model) -> ChunkCodec:
  """`model` itself if it is a `ChunkCodec` (keeping its compilations), else a new one."""
  return model if isinstance(model, ChunkCodec) else ChunkCodec(model)


# ----------------------------------------------------------------------------------------------
# Chunk plan and cross-fade (pure functions).


def check_chunking(temporal_factor: int, chunk_frames: int, overlap_frames: int) -> None:
  """Raises ValueError unless chunks of `chunk_frames` overlapping by `overlap_frames` work.

  The chunk length must follow the causal rule 1 + r·k (the error names valid lengths), and
  each frame may be blended from at most two chunks (2·overlap ≤ chunk).
  """
  if (message := frame_rule_error(chunk_frames, temporal_factor, "a chunk")) is not None:
    raise UserError(f"chunk_frames={chunk_frames}: {message}")
  if not 0 <= overlap_frames <= chunk_frames // 2:
    raise UserError(
        f"overlap_frames={overlap_frames} must be in [0, {chunk_frames // 2}] for"
        f" chunk_frames={chunk_frames} (at most half a chunk, so that every frame is blended"
        " from at most two chunks)"
    )


def chunk_starts(num_frames: int, chunk_frames: int, overlap_frames: int) -> list[int]:
  """First frame of every chunk: 0, s, 2s, … (s = chunk - overlap) until one reaches the end.

  The last chunk may extend past `num_frames` (it is padded, then trimmed).
  """
  if num_frames < 1:
    raise ValueError(f"a video needs at least one frame, got {num_frames}")
  stride = chunk_frames - overlap_frames
  extra = max(num_frames - chunk_frames, 0)
  return [i * stride for i in range(1 + -(-extra // stride))]


def crossfade_weights(overlap_frames: int) -> np.ndarray:
  """Weights of the later chunk over the overlap: (overlap,) = (i + 1) / (overlap + 1).

  Linear in the frame index, strictly between 0 and 1; the earlier chunk gets `1 - w`, so
  the two always sum to 1 (e.g. overlap 4: 0.2, 0.4, 0.6, 0.8).
  """
  return np.arange(1, overlap_frames + 1, dtype=np.float32) / np.float32(overlap_frames + 1)


class _CrossFade:
  """Joins chunk outputs in time order; `add` returns the frames that are final."""

  def __init__(self, overlap_frames: int):
    self.overlap = overlap_frames
    self.weights = crossfade_weights(overlap_frames)[None, :, None, None, None]
    self.tail = None  # the previous chunk's last `overlap` frames, waiting for their blend

  def add(self, chunk: np.ndarray, num_real: int) -> np.ndarray:
    """chunk: (B, chunk_frames, H, W, C) of which the first `num_real` frames are real."""
    out = chunk[:, :num_real]
    if self.tail is not None and self.overlap:
      head = self.tail * (1.0 - self.weights) + out[:, : self.overlap] * self.weights
      out = np.concatenate([head, out[:, self.overlap :]], axis=1)
    keep = min(self.overlap, out.shape[1])
    self.tail = out[:, out.shape[1] - keep :]
    return out[:, : out.shape[1] - keep]

  def finish(self) -> np.ndarray:
    tail, self.tail = self.tail, None
    return tail


# ----------------------------------------------------------------------------------------------
# Chunk iteration.


def _as_batched_video(video) -> tuple[np.ndarray, bool]:
  video = np.asarray(video, np.float32)
  if video.ndim == 4:
    return video[None], True
  if video.ndim != 5:
    raise ValueError(f"expected a video (T, H, W, C) or (B, T, H, W, C), got shape {video.shape}")
  return video, False


def check_frame_size(shape, spatial_factor: int) -> None:
  """Raises an actionable ValueError unless frames (shape[-3:-1]) are divisible by s."""
  if (message := frame_size_error(*shape[-3:-1], spatial_factor)) is not None:
    raise ValueError(message)


def _iter_chunks(
    blocks: Iterable[np.ndarray], chunk_frames: int, overlap_frames: int
) -> Iterator[tuple[np.ndarray, int]]:
  """(chunk (B, chunk_frames, …), number of real frames) from time-ordered (B, t, …) blocks.

  Holds at most one chunk plus one block: a chunk is cut as soon as its frames are there.
  """
  stride = chunk_frames - overlap_frames
  buffer, started = None, False
  for block in blocks:
    block = np.asarray(block, np.float32)
    buffer = block if buffer is None else np.concatenate([buffer, block], axis=1)
    while buffer.shape[1] >= chunk_frames:
      yield buffer[:, :chunk_frames], chunk_frames
      buffer, started = buffer[:, stride:], True
  if buffer is None or (not started and buffer.shape[1] == 0):
    raise ValueError("a video needs at least one frame, got none")
  # The end: frames not yet covered by a chunk (beyond the overlap) get one padded chunk.
  while buffer.shape[1] > overlap_frames or not started:
    num_real = buffer.shape[1]
    pad = np.repeat(buffer[:, -1:], chunk_frames - num_real, axis=1)
    yield np.concatenate([buffer, pad], axis=1), num_real
    buffer, started = buffer[:, stride:], True


def _run_batched(
    fn, items: Iterable[tuple[np.ndarray, int]], batch_chunks: int
) -> Iterator[tuple[np.ndarray, int]]:
  """Applies `fn` to `batch_chunks` chunks at a time, stacked on the batch axis.

  A short last group is filled with copies of its last chunk, so `fn` always sees one shape
  (one compilation).
  """
  if batch_chunks < 1:
    raise UserError(f"batch_chunks={batch_chunks} must be at least 1")
  items = iter(items)
  while group := list(itertools.islice(items, batch_chunks)):
    chunks = [c for c, _ in group]
    chunks += [chunks[-1]] * (batch_chunks - len(chunks))
    batch = chunks[0].shape[0]
    out = fn(np.concatenate(chunks, axis=0))
    for i, (_, num_real) in enumerate(group):
      yield out[i * batch : (i + 1) * batch], num_real


# ----------------------------------------------------------------------------------------------
# Cross-faded chunks (ProMAG).


def reconstruct_stream(
    model,
    blocks: Iterable[np.ndarray],
    *,
    chunk_frames: int = 17,
    overlap_frames: int = 4,
    batch_chunks: int = 1,
) -> Iterator[np.ndarray]:
  """Streaming `reconstruct_long_video`: time-ordered blocks in, finished frames out.

  Host memory holds about one chunk (times `batch_chunks`) of input and output, whatever the
  video length; a 10-minute file can be read, reconstructed and written block by block.

  Args:
    model: a `VideoAutoencoder` or a `ChunkCodec`.
    blocks: pieces of one video in time order, each (B, t, H, W, C) float32 in [-1, 1], any
      t ≥ 1 (B, H, W, C equal in all).
    chunk_frames, overlap_frames, batch_chunks: as in `reconstruct_long_video`.

  Yields:
    (B, t', H, W, C) reconstructed frames in order; in all as many frames as came in.
  """
  codec = as_codec(model)
  check_chunking(codec.temporal_factor, chunk_frames, overlap_frames)
  fade = _CrossFade(overlap_frames)

  def checked(blocks):
    for block in blocks:
      check_frame_size(np.shape(block), codec.spatial_factor)
      yield block

  chunks = _iter_chunks(checked(blocks), chunk_frames, overlap_frames)
  for out, num_real in _run_batched(codec.reconstruct, chunks, batch_chunks):
    done = fade.add(out, num_real)
    if done.shape[1]:
      yield done
  tail = fade.finish()
  if tail is not None and tail.shape[1]:
    yield tail


def reconstruct_long_video(
    model,
    video: np.ndarray,
    *,
    chunk_frames: int = 17,
    overlap_frames: int = 4,
    batch_chunks: int = 1,
) -> np.ndarray:
  """Encodes and decodes a video of any length in cross-faded chunks (ProMAG's recipe).

  Args:
    model: a `VideoAutoencoder` (temporal factor r, spatial factor s) or a `ChunkCodec`.
    video: (T, H, W, C) or (B, T, H, W, C) float32 in [-1, 1]; any T ≥ 1; H, W divisible by s.
    chunk_frames: frames per chunk, 1 + r·k (17 for a 4x or 8x or 16x model).
    overlap_frames: frames shared by consecutive chunks, blended with a linear cross-fade;
      0 ≤ overlap ≤ chunk_frames // 2.
    batch_chunks: chunks run together on the batch axis (more speed, more memory).

  Returns:
    The reconstruction (posterior mean decoded), same shape as `video`, float32.

  Raises:
    ValueError: a chunk length that breaks the frame rule (naming valid lengths), a bad
      overlap, or a frame size not divisible by s.
  """
  video, squeeze = _as_batched_video(video)
  out, t = None, 0
  for piece in reconstruct_stream(
      model,
      [video],
      chunk_frames=chunk_frames,
      overlap_frames=overlap_frames,
      batch_chunks=batch_chunks,
  ):
    if out is None:  # output channels are the model's, known from the first piece
      out = np.empty(video.shape[:4] + piece.shape[-1:], np.float32)
    out[:, t : t + piece.shape[1]] = piece
    t += piece.shape[1]
  assert t == video.shape[1], (t, video.shape)
  return out[0] if squeeze else out


@dataclasses.dataclass(frozen=True)
class ChunkedLatents:
  """The latents of a video encoded in overlapping chunks (`encode_chunks`).

  latents: (B, N, 1+k, H/s, W/s, C_z) posterior means; chunk i covers frames
    [i·(chunk_frames - overlap_frames), … + chunk_frames) of the (padded) video.
  """

  latents: np.ndarray
  num_frames: int
  chunk_frames: int
  overlap_frames: int


def encode_chunks(
    model,
    video: np.ndarray,
    *,
    chunk_frames: int = 17,
    overlap_frames: int = 4,
    batch_chunks: int = 1,
) -> ChunkedLatents:
  """The latent half of `reconstruct_long_video`: one posterior mean per chunk.

  video: (B, T, H, W, C) or (T, H, W, C) float32 in [-1, 1] (then latents have B = 1).
  """
  codec = as_codec(model)
  check_chunking(codec.temporal_factor, chunk_frames, overlap_frames)
  video, _ = _as_batched_video(video)
  check_frame_size(video.shape, codec.spatial_factor)
  chunks = _iter_chunks([video], chunk_frames, overlap_frames)
  means = [z for z, _ in _run_batched(lambda x: codec.encode(x).mean, chunks, batch_chunks)]
  return ChunkedLatents(np.stack(means, axis=1), video.shape[1], chunk_frames, overlap_frames)


def decode_chunks(model, chunked: ChunkedLatents, *, batch_chunks: int = 1) -> np.ndarray:
  """Decodes `encode_chunks`' latents and cross-fades the chunks: (B, T, H, W, C)."""
  codec = as_codec(model)
  starts = chunk_starts(chunked.num_frames, chunked.chunk_frames, chunked.overlap_frames)
  if len(starts) != chunked.latents.shape[1]:
    raise ValueError(
        f"{chunked.latents.shape[1]} latent chunks, but {chunked.num_frames}"
        f" frames in chunks of {chunked.chunk_frames} need {len(starts)}"
    )
  items = (
      (chunked.latents[:, i], min(chunked.chunk_frames, chunked.num_frames - start))
      for i, start in enumerate(starts)
  )
  fade = _CrossFade(chunked.overlap_frames)
  pieces = [fade.add(out, n) for out, n in _run_batched(codec.decode, items, batch_chunks)]
  return np.concatenate(pieces + [fade.finish()], axis=1)


# ----------------------------------------------------------------------------------------------
# Temporal tiling as released by OD-VAE (Open-Sora-Plan v1.2) and CV-VAE.


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
  """[start, end) of each temporal tile, consecutive tiles sharing one frame.

  The official rule (OSP `CausalVAEModel.tiled_encode/decode` with `t_min = tile`; CV-VAE with
  `en_de_n_frames_a_time = tile - 1`): starts every `tile - 1` frames; a short remainder is
  one more, shorter tile.
  """
  if tile < 2:
    raise ValueError(f"a temporal tile needs at least 2 frames (one is shared), got {tile}")
  starts = list(range(0, length, tile - 1))
  if len(starts) == 1:
    return [(0, length)]
  spans = [(a, min(b + 1, length)) for a, b in zip(starts, starts[1:])]
  if spans[-1][1] < length:
    spans.append((starts[-1], length))
  return spans


def _check_tile(temporal_factor: int, chunk_frames: int) -> None:
  if chunk_frames < 2 or frame_rule_error(chunk_frames, temporal_factor, "a tile") is not None:
    valid = [n for n in valid_frame_counts(temporal_factor, chunk_frames, 3) if n > 1][:2]
    raise UserError(
        f"chunk_frames={chunk_frames}: tiles need 1+{temporal_factor}k frames"
        f" with k ≥ 1 (e.g. {' or '.join(map(str, valid))})"
    )


def tiled_encode(model, video: np.ndarray, chunk_frames: int) -> DiagonalGaussian:
  """Encodes in `chunk_frames`-frame tiles overlapping by one frame (OD-VAE / CV-VAE).

  Each later tile's first latent (the image-like encoding of the shared frame) is dropped.
  Equals OSP v1.2 `tiled_encode` with `tile_sample_min_size_t = chunk_frames` (29 in the
  official scripts) and CV-VAE with `en_de_n_frames_a_time = chunk_frames - 1` (16 released).

  Args:
    model: a `VideoAutoencoder` (temporal factor r) or a `ChunkCodec`.
    video: (B, 1+r·k, H, W, C) float32 in [-1, 1].
    chunk_frames: 1 + r·m, m ≥ 1.

  Returns:
    The posterior over (B, 1+k, H/s, W/s, C_z), numpy arrays.
  """
  codec = as_codec(model)
  _check_tile(codec.temporal_factor, chunk_frames)
  video = np.asarray(video, np.float32)
  if video.ndim != 5:
    raise ValueError(f"expected video (B, T, H, W, C), got shape {video.shape}")
  if message := frame_rule_error(video.shape[1], codec.temporal_factor, "the video"):
    raise ValueError(message + "; reconstruct_tiled pads any length")
  check_frame_size(video.shape, codec.spatial_factor)
  means, logvars = [], []
  for i, (a, b) in enumerate(tile_spans(video.shape[1], chunk_frames)):
    posterior = codec.encode(video[:, a:b])
    means.append(posterior.mean[:, 1 if i else 0 :])
    logvars.append(posterior.logvar[:, 1 if i else 0 :])
  return DiagonalGaussian(np.concatenate(means, axis=1), np.concatenate(logvars, axis=1))


def tiled_decode(model, latent: np.ndarray, chunk_latents: int) -> np.ndarray:
  """Decodes in `chunk_latents`-latent tiles overlapping by one latent (OD-VAE / CV-VAE).

  Each later tile's first frame is dropped. Equals OSP v1.2 `tiled_decode` with
  `tile_latent_min_size_t = chunk_latents` (8 in the official scripts) and CV-VAE with
  `en_de_n_frames_a_time = r·(chunk_latents - 1)`.

  Args:
    model: a `VideoAutoencoder` (temporal factor r) or a `ChunkCodec`.
    latent: (B, 1+k, H/s, W/s, C_z).
    chunk_latents: ≥ 2.

  Returns:
    (B, 1+r·k, H, W, C) float32.
  """
  codec = as_codec(model)
  latent = np.asarray(latent, np.float32)
  if latent.ndim != 5:
    raise ValueError(f"expected latent (B, T, H, W, C), got shape {latent.shape}")
  pieces = []
  for i, (a, b) in enumerate(tile_spans(latent.shape[1], chunk_latents)):
    pieces.append(codec.decode(latent[:, a:b])[:, 1 if i else 0 :])
  return np.concatenate(pieces, axis=1)


def reconstruct_tiled(model, video: np.ndarray, *, chunk_frames: int = 17) -> np.ndarray:
  """OD-VAE-style tiled reconstruction of a video of any length.

  Pads T to the next 1 + r·k by replicating the last frame, `tiled_encode`s (posterior mean)
  with `chunk_frames`-frame tiles, `tiled_decode`s with the matching 1 + (chunk_frames-1)/r
  latent tiles, and trims. video: (T, H, W, C) or (B, T, H, W, C) in [-1, 1]; same shape out.
  """
  codec = as_codec(model)
  _check_tile(codec.temporal_factor, chunk_frames)
  video, squeeze = _as_batched_video(video)
  t, r = video.shape[1], codec.temporal_factor
  if t < 1:
    raise ValueError("a video needs at least one frame, got none")
  padded_t = 1 + r * -(-(t - 1) // r)
  padded = np.concatenate([video, np.repeat(video[:, -1:], padded_t - t, axis=1)], axis=1)
  latent = tiled_encode(codec, padded, chunk_frames).mean
  out = tiled_decode(codec, latent, 1 + (chunk_frames - 1) // r)[:, :t]
  return out[0] if squeeze else out
