"""High resolution: spatial tiles with linear blending (any model), or activations split along
height across devices (exact).

Tiles (lossy, any model, one device): the frame is cut into overlapping tiles of equal size,
each tile is encoded (or decoded) on its own, and the results are blended with weights that
ramp linearly across each overlap (the later tile's weight (i+1)/(overlap+1), as the temporal
cross-fade), normalised so that they sum to one everywhere. Encoding blends latents, decoding
blends pixels, as diffusers' tiled VAEs do.

    posterior = encode_in_tiles(model, video, tile=256, overlap=64)
    video = decode_in_tiles(model, posterior.mean, tile=32, overlap=8)

Sharding (exact, several devices): `chunked.ChunkCodec(model, mesh=spatial_mesh())` splits the
input and every conv output as the sharding rules say (`core/sharding.py`; by default height
over the mesh's `spatial` axis, batch over its data axes); XLA exchanges the conv halos between neighbouring devices and reduces
the per-frame norm statistics across them, so the result equals one device's to float
rounding. It composes with streaming (`streaming.stream_encode(codec, ...)`): long and large.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from bootvae_jax.core import sharding
from bootvae_jax.inference import chunked
from bootvae_jax.inference import streaming
from bootvae_jax.models.autoencoder import DiagonalGaussian


def spatial_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The common mesh (`sharding.make_mesh`) with every one of `devices` (default: all) on its
  `spatial` axis, which the default rules split frame height over."""
  return sharding.make_mesh({"spatial": -1}, devices)


# ----------------------------------------------------------------------------------------------
# Tiles.


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """First pixel of each tile along one axis: every `tile - overlap`, the last one flush with
  the end (so all tiles have the same size: one compilation). One tile if it covers `length`."""
  if tile >= length:
    return [0]
  stride = tile - overlap
  count = 1 + -(-(length - tile) // stride)
  return [min(i * stride, length - tile) for i in range(count)]


def tile_weights(starts: list[int], tile: int, length: int) -> list[np.ndarray]:
  """Blend weights (tile,) of each tile: linear ramps across the overlap with the previous
  tile (up) and the next one (down), 1 elsewhere; tiles are clipped to `length`."""
  size = min(tile, length)
  weights = []
  for i, start in enumerate(starts):
    w = np.ones(size, np.float32)
    if i > 0:
      shared = starts[i - 1] + size - start
      w[:shared] = chunked.crossfade_weights(shared)
    if i + 1 < len(starts):
      shared = start + size - starts[i + 1]
      w[size - shared :] = np.minimum(w[size - shared :], chunked.crossfade_weights(shared)[::-1])
    weights.append(w)
  return weights


def blend_tiles(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, tile: int, overlap: int, scale: float
) -> np.ndarray:
  """Applies `fn` tile by tile over H and W of `x` and blends the results.

  Args:
    fn: (B, T, h, w, C) → (B, T', h·scale, w·scale, C'), e.g. an encoder (scale 1/s).
    x: (B, T, H, W, C).
    tile: tile height and width in pixels of `x` (clipped to H, W); tile·scale an integer.
    overlap: pixels of `x` shared by neighbouring tiles, 0 ≤ overlap ≤ tile / 2.
    scale: output pixels per input pixel.

  Returns:
    (B, T', H·scale, W·scale, C') float32: Σ w·fn(tile) / Σ w, w the outer product of the
    row and column `tile_weights` scaled to the output.
  """
  if not 0 <= overlap <= tile // 2:
    raise ValueError(f"overlap={overlap} must be in [0, {tile // 2}] for tile={tile}")
  height, width = x.shape[2:4]
  rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
  up = lambda n: int(round(n * scale))
  for n in (tile, overlap, height, width):
    if abs(n * scale - up(n)) > 1e-9:
      raise ValueError(
          f"{n} pixels times {scale} is not a whole number of output pixels;"
          f" use tile and overlap divisible by {int(round(1 / scale))}"
      )
  row_w = tile_weights([up(r) for r in rows], up(tile), up(height))
  col_w = tile_weights([up(c) for c in cols], up(tile), up(width))
  th, tw = min(tile, height), min(tile, width)
  out = total = None
  for r, wr in zip(rows, row_w):
    for c, wc in zip(cols, col_w):
      y = np.asarray(fn(x[:, :, r : r + th, c : c + tw]), np.float32)
      if out is None:
        out = np.zeros(y.shape[:2] + (up(height), up(width)) + y.shape[4:], np.float32)
        total = np.zeros((up(height), up(width), 1), np.float32)
      w = (wr[:, None] * wc[None, :])[..., None]
      out[:, :, up(r) : up(r) + y.shape[2], up(c) : up(c) + y.shape[3]] += w * y
      total[up(r) : up(r) + y.shape[2], up(c) : up(c) + y.shape[3]] += w
  return out / total


def encode_in_tiles(
    model, video: np.ndarray, *, tile: int = 256, overlap: int = 64, chunk_frames: int | None = None
) -> DiagonalGaussian:
  """Encodes a large video in spatial tiles, blending the latents.

  Args:
    model: any `VideoAutoencoder` (spatial factor s) or its `chunked.ChunkCodec`.
    video: (B, T, H, W, C) float32 in [-1, 1]; T following the frame rule unless streaming.
    tile, overlap: tile size and overlap in pixels, divisible by s.
    chunk_frames: stream each tile in time (`streaming.stream_encode`, causal models) with
      this first chunk length; None encodes each tile's whole clip.

  Returns:
    The posterior (numpy) over (B, T', H/s, W/s, C_z), mean and logvar blended.
  """
  codec = chunked.as_codec(model)
  video = np.asarray(video, np.float32)
  chunked.check_frame_size(video.shape, codec.spatial_factor)

  def encode(x):
    p = streaming.stream_encode(codec, x, chunk_frames) if chunk_frames else codec.encode(x)
    return np.concatenate([p.mean, p.logvar], axis=-1)

  moments = blend_tiles(encode, video, tile=tile, overlap=overlap, scale=1 / codec.spatial_factor)
  mean, logvar = np.split(moments, 2, axis=-1)
  return DiagonalGaussian(mean, logvar)


def decode_in_tiles(
    model, z: np.ndarray, *, tile: int = 32, overlap: int = 8, chunk_latents: int | None = None
) -> np.ndarray:
  """Decodes latents in spatial tiles (`tile`, `overlap` in latent pixels), blending pixels.

  z: (B, T', h, w, C_z) → (B, T, h·s, w·s, C) float32. `chunk_latents` streams each tile.
  """
  codec = chunked.as_codec(model)

  def decode(x):
    return streaming.stream_decode(codec, x, chunk_latents) if chunk_latents else codec.decode(x)

  return blend_tiles(
      decode, np.asarray(z, np.float32), tile=tile, overlap=overlap, scale=codec.spatial_factor
  )
