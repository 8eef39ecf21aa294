"""Exact streaming: encode and decode a video of any length chunk by chunk, equal to the whole
clip.

A causal model with per-frame norms (the ProMAG base and its grown 8x / 16x models, any config
with `rmsnorm_frame` / `groupnorm_frame`) runs one chunk at a time; each temporal op keeps what
the next chunk needs of this one (`models.streaming.Stream`: a causal conv its last `kt - st`
input frames, a temporal upsampler its held frame, AdaNorm its last branch-A row). The result
equals the model on the whole clip to float rounding, and device memory is bounded by one
chunk whatever the length.

    posterior = stream_encode(model, video, chunk_frames=17)   # (B, 1+K, h, w, C_z)
    video = stream_decode(model, posterior.mean, chunk_latents=5)

Chunks: a first chunk of `chunk_frames = 1 + r·k` frames, then chunks of `r·k` frames (the
frame rule `1 + r·K` continued); the decoder likewise with `chunk_latents = 1 + k` latents,
then `k`. Inputs of any length are padded at the end by repeating the last frame to the next
`1 + r·K` (the latents then cover the padded video; `stream_reconstruct_blocks` trims).
Models with clip-wide norms (the released CV-VAE, OD-VAE) are refused: every one of their
output frames depends on the whole clip; use their official tiling (`chunked.tiled_encode`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from bootvae_jax.cli import UserError
from bootvae_jax.inference import chunked
from bootvae_jax.models.autoencoder import DiagonalGaussian
from bootvae_jax.models.autoencoder import frame_rule_error


def check_streamable(codec: chunked.ChunkCodec) -> None:
  """Raises ValueError (pointing to the official tiling) if the model cannot stream exactly."""
  if codec.stream_blocker is not None:
    raise UserError(f"this model cannot be streamed exactly: {codec.stream_blocker}")


def _check_chunk_frames(temporal_factor: int, chunk_frames: int) -> None:
  r = temporal_factor
  if chunk_frames < 1 + r or frame_rule_error(chunk_frames, r) is not None:
    raise UserError(
        f"chunk_frames={chunk_frames}: a {r}x model streams in a first chunk of"
        f" 1+{r}k frames (k ≥ 1, e.g. {1 + r} or {1 + 4 * r}) and then chunks of"
        f" {r}k frames"
    )


def _as_blocks(video) -> tuple[Iterable[np.ndarray], bool]:
  """(time-ordered (B, t, ...) blocks, whether the caller's blocks had no batch axis)."""
  if hasattr(video, "shape") and hasattr(video, "dtype"):  # one array: the whole video
    video = np.asarray(video, np.float32)
    if video.ndim == 4:
      return [video[None]], True
    if video.ndim != 5:
      raise ValueError(f"expected (T, H, W, C) or (B, T, H, W, C), got shape {video.shape}")
    return [video], False
  blocks = iter(video)
  try:
    first = np.asarray(next(blocks), np.float32)
  except StopIteration:
    raise ValueError("a video needs at least one frame, got no blocks") from None
  if first.ndim not in (4, 5):
    raise ValueError(f"expected blocks (t, H, W, C) or (B, t, H, W, C), got {first.shape}")
  unbatched = first.ndim == 4

  def batched():
    yield first[None] if unbatched else first
    for block in blocks:
      block = np.asarray(block, np.float32)
      yield block[None] if unbatched else block

  return batched(), unbatched


def _cut(
    blocks: Iterable[np.ndarray],
    first_size: int,
    later_size: int,
    final_size: Callable[[int, bool], int],
    *,
    flag_last: bool,
) -> Iterator[tuple[np.ndarray, int, bool]]:
  """(chunk, real frames in it, is the last chunk) from time-ordered (B, t, ...) blocks.

  The first chunk has `first_size` frames, later ones `later_size`; a final partial chunk of
  m frames is padded by repeating its last frame to `final_size(m, is_first)` (a padded chunk
  is flagged last). With `flag_last` a full last chunk is flagged too, which holds one chunk
  back until the next block shows whether more frames come; without, a chunk is yielded as
  soon as its frames are there.
  """

  def cut():
    buffer, size, started = None, first_size, False
    for block in blocks:
      buffer = block if buffer is None else np.concatenate([buffer, block], axis=1)
      while buffer.shape[1] >= size:
        yield buffer[:, :size], size, False
        buffer, size, started = buffer[:, size:], later_size, True
    if buffer is None or (not started and buffer.shape[1] == 0):
      raise ValueError("a video needs at least one frame, got none")
    if m := buffer.shape[1]:
      pad = np.repeat(buffer[:, -1:], final_size(m, not started) - m, axis=1)
      yield np.concatenate([buffer, pad], axis=1), m, True

  if not flag_last:
    yield from cut()
    return
  pending = None
  for item in cut():
    if pending is not None:
      yield pending
    pending = item
  yield (*pending[:2], True)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def stream_encode_blocks(
    model, blocks: Iterable[np.ndarray], chunk_frames: int = 17
) -> Iterator[DiagonalGaussian]:
  """Encodes time-ordered video blocks chunk by chunk; yields each chunk's posterior.

  Args:
    model: a causal `VideoAutoencoder` / `GrownAutoencoder` (temporal factor r, spatial factor
      s) or a `chunked.ChunkCodec` of one.
    blocks: (B, t, H, W, C) float32 in [-1, 1], any t ≥ 1, H and W divisible by s.
    chunk_frames: 1 + r·k with k ≥ 1; later chunks have r·k frames.

  Yields:
    Posteriors with numpy mean / logvar (B, t', H/s, W/s, C_z): 1 + ceil((T-1)/r) latent
    frames in all, equal to `model.encode` of the video padded to that many (last frame
    repeated).
  """
  codec = chunked.as_codec(model)
  check_streamable(codec)
  r = codec.temporal_factor
  _check_chunk_frames(r, chunk_frames)
  # A causal encoder pads its last chunk to the full size (one compilation) and trims the
  # latents of the padding; one that looks ahead cannot (padding would change real frames).
  pad_full = not codec.encoder_looks_ahead

  def final_size(m: int, first: bool) -> int:
    if pad_full:
      return chunk_frames if first else chunk_frames - 1
    return 1 + r * _ceil_div(m - 1, r) if first else r * _ceil_div(m, r)

  states = None
  for step, (chunk, num_real, last) in enumerate(
      _cut(blocks, chunk_frames, chunk_frames - 1, final_size, flag_last=not pad_full)
  ):
    chunked.check_frame_size(chunk.shape, codec.spatial_factor)
    posterior, states = codec.encode_step(chunk, states, last=last and not pad_full)
    if pad_full and last:  # latent frames of real input frames (first: 1 + r·k ↦ 1 + k)
      keep = 1 + _ceil_div(num_real - 1, r) if step == 0 else _ceil_div(num_real, r)
      posterior = DiagonalGaussian(posterior.mean[:, :keep], posterior.logvar[:, :keep])
    yield posterior


def stream_decode_blocks(
    model, latent_blocks: Iterable[np.ndarray], chunk_latents: int = 5
) -> Iterator[np.ndarray]:
  """Decodes time-ordered latent blocks chunk by chunk; yields frames as they are final.

  Args:
    model: a causal `VideoAutoencoder` / `GrownAutoencoder` or its `chunked.ChunkCodec`.
    latent_blocks: (B, t, h, w, C_z), any t ≥ 1 (e.g. the means `stream_encode_blocks`
      yields).
    chunk_latents: latent frames of the first chunk (≥ 2); later chunks have one fewer.

  Yields:
    (B, t', H, W, C) float32 frames, 1 + r·(K - 1) in all for K latent frames: equal to
    `model.decode` of all latents. A decoder that looks ahead (trilinear time upsampling)
    yields some frames one chunk late.
  """
  codec = chunked.as_codec(model)
  check_streamable(codec)
  r = codec.temporal_factor
  if chunk_latents < 2:
    raise ValueError(
        f"chunk_latents={chunk_latents}: stream decoding needs chunks of at least"
        " 2 latent frames (1 + k, k ≥ 1)"
    )
  pad_full = not codec.decoder_looks_ahead  # as in stream_encode_blocks
  full = lambda m, first: (chunk_latents if first else chunk_latents - 1) if pad_full else m
  states = None
  for step, (chunk, num_real, last) in enumerate(
      _cut(latent_blocks, chunk_latents, chunk_latents - 1, full, flag_last=not pad_full)
  ):
    frames, states = codec.decode_step(chunk, states, last=last and not pad_full)
    if pad_full and last:  # frames of real latents (first: 1 + k ↦ 1 + r·k)
      frames = frames[:, : 1 + r * (num_real - 1) if step == 0 else r * num_real]
    if frames.shape[1]:
      yield frames


def stream_reconstruct_blocks(
    model, blocks: Iterable[np.ndarray], chunk_frames: int = 17
) -> Iterator[np.ndarray]:
  """decode(encode(video).mean), streamed: time-ordered blocks in, finished frames out.

  Any number of frames T: the end is padded by repeating the last frame to the next 1 + r·K
  and the output trimmed, so exactly T frames come out, equal to the whole-clip reconstruction
  of the padded video. Memory is bounded by a chunk, whatever T.

  Args:
    model: a causal model or its `chunked.ChunkCodec`.
    blocks: (B, t, H, W, C) float32 in [-1, 1].
    chunk_frames: 1 + r·k (k ≥ 1); the decoder runs on the matching 1 + k latents.

  Yields:
    (B, t', H, W, C_out) reconstructed frames in order.
  """
  codec = chunked.as_codec(model)
  check_streamable(codec)
  r = codec.temporal_factor
  _check_chunk_frames(r, chunk_frames)
  if not (codec.encoder_looks_ahead or codec.decoder_looks_ahead):
    # Chunk i's frames come back with chunk i: encode and decode fused in one step, the last
    # chunk padded to the full size and trimmed (two compilations in all).
    states = None
    full = lambda m, first: chunk_frames if first else chunk_frames - 1
    for chunk, num_real, _ in _cut(blocks, chunk_frames, chunk_frames - 1, full, flag_last=False):
      chunked.check_frame_size(chunk.shape, codec.spatial_factor)
      frames, states = codec.reconstruct_step(chunk, states)
      yield frames[:, :num_real]
    return
  read = {"frames": 0, "done": False}

  def counted():
    for block in blocks:
      read["frames"] += block.shape[1]
      yield block
    read["done"] = True

  means = (p.mean for p in stream_encode_blocks(codec, counted(), chunk_frames))
  emitted = 0
  for frames in stream_decode_blocks(codec, means, 1 + (chunk_frames - 1) // r):
    if read["done"]:  # padding frames only exist once the input has ended
      frames = frames[:, : max(read["frames"] - emitted, 0)]
    emitted += frames.shape[1]
    if frames.shape[1]:
      yield frames


def stream_encode(model, video, chunk_frames: int = 17) -> DiagonalGaussian:
  """Encodes a video chunk by chunk, equal to `model.encode` on the whole clip.

  Args:
    model: a causal `VideoAutoencoder` / `GrownAutoencoder` (temporal factor r) or its
      `chunked.ChunkCodec` (which keeps compilations between calls and may hold a mesh).
    video: an array (T, H, W, C) or (B, T, H, W, C) float32 in [-1, 1], or an iterable of
      such blocks along time (e.g. decoded from a file); T frames in all, any T ≥ 1.
    chunk_frames: frames of the first chunk, 1 + r·k (k ≥ 1); later chunks have r·k.

  Returns:
    The posterior (numpy mean / logvar) over all 1 + ceil((T-1)/r) latent frames,
    (B, 1+K, H/s, W/s, C_z) (no B axis if the input had none).

  Raises:
    ValueError: a model with clip-wide norms (pointing to its official tiling), a bad
      chunk length (naming valid ones), a frame size not divisible by s.
  """
  blocks, unbatched = _as_blocks(video)
  pieces = list(stream_encode_blocks(model, blocks, chunk_frames))
  mean = np.concatenate([p.mean for p in pieces], axis=1)
  logvar = np.concatenate([p.logvar for p in pieces], axis=1)
  return DiagonalGaussian(mean[0], logvar[0]) if unbatched else DiagonalGaussian(mean, logvar)


def stream_decode(model, z, chunk_latents: int = 5) -> np.ndarray:
  """Decodes latents chunk by chunk, equal to `model.decode` on all of them.

  Args:
    model: as in `stream_encode`.
    z: an array (K, h, w, C_z) or (B, K, h, w, C_z), or an iterable of such blocks along time.
    chunk_latents: latent frames of the first chunk, ≥ 2; later chunks have one fewer.

  Returns:
    The video (B, 1 + r·(K-1), H, W, C) float32 (no B axis if the input had none).
  """
  blocks, unbatched = _as_blocks(z)
  video = np.concatenate(list(stream_decode_blocks(model, blocks, chunk_latents)), axis=1)
  return video[0] if unbatched else video
