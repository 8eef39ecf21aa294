"""High resolution (`bootvae_jax.inference.spatial`): blended spatial tiles, and activations split
along height over 4 fake CPU devices (tests/conftest.py) equal to one device."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bootvae_jax import models
from bootvae_jax.core import sharding
from bootvae_jax.inference import chunked
from bootvae_jax.inference import spatial
from bootvae_jax.inference import streaming
from bootvae_jax.models import autoencoder

from test_streaming import _small_config  # pylint: disable=wrong-import-order

TOL = 1e-5


def _video(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (1, t, h, w, 3)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Tiles.


@pytest.mark.parametrize(
    "length,tile,overlap,starts",
    [(16, 16, 4, [0]), (20, 16, 4, [0, 4]), (36, 16, 4, [0, 12, 20]), (40, 16, 4, [0, 12, 24])],
)
def test_tile_starts_cover_with_equal_tiles(length, tile, overlap, starts):
  assert spatial.tile_starts(length, tile, overlap) == starts
  weights = spatial.tile_weights(starts, tile, length)
  total = np.zeros(length, np.float32)
  for start, w in zip(starts, weights):
    assert np.all(w > 0)
    total[start : start + min(tile, length)] += w
  np.testing.assert_allclose(total, 1.0, rtol=1e-6)  # a partition of unity


@pytest.mark.parametrize("scale", [0.25, 1.0, 2.0])
def test_blending_a_pointwise_function_is_that_function(scale):
  x = _video(3, 40, 36)
  factor = int(1 / scale) if scale < 1 else 1

  def fn(tile):  # pointwise in space up to resampling: tiling must not change it
    tile = 2.0 * tile + 1.0
    if scale < 1:
      return tile[:, :, ::factor, ::factor]
    return tile.repeat(int(scale), axis=2).repeat(int(scale), axis=3)

  out = spatial.blend_tiles(fn, x, tile=16, overlap=4, scale=scale)
  np.testing.assert_allclose(out, fn(x), rtol=1e-6, atol=1e-6)


def test_tiles_blend_model_outputs_linearly():
  model = models.build_model(_small_config(), rngs=autoencoder.init_rngs(0))
  codec = chunked.ChunkCodec(model)
  video = _video(5, 8, 24)
  # One tile covering the frame is the model itself.
  whole = codec.encode(video)
  one = spatial.encode_in_tiles(codec, video, tile=24, overlap=4)
  np.testing.assert_allclose(one.mean, whole.mean, atol=TOL)
  # Tiles of 16 every 8 pixels: latent columns 0-3 come from tile 0 alone, 8-11 from tile 1
  # alone, 4-7 blend them with weights 0.8 … 0.2 / 0.2 … 0.8.
  tiled = spatial.encode_in_tiles(codec, video, tile=16, overlap=8)
  left, right = codec.encode(video[:, :, :, :16]).mean, codec.encode(video[:, :, :, 8:]).mean
  np.testing.assert_allclose(tiled.mean[:, :, :, :4], left[:, :, :, :4], atol=TOL)
  np.testing.assert_allclose(tiled.mean[:, :, :, 8:], right[:, :, :, 4:], atol=TOL)
  w = np.float32([1, 2, 3, 4]) / 5
  np.testing.assert_allclose(
      tiled.mean[:, :, :, 4:8],
      (1 - w[:, None]) * left[:, :, :, 4:] + w[:, None] * right[:, :, :, :4],
      atol=TOL,
  )
  out = spatial.decode_in_tiles(codec, tiled.mean, tile=8, overlap=2)
  assert out.shape == video.shape
  with pytest.raises(ValueError, match="divisible by 2"):
    spatial.encode_in_tiles(codec, video, tile=15, overlap=3)


# ----------------------------------------------------------------------------------------------
# Height sharding.


def test_height_sharding_equals_one_device():
  assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"
  model = models.build_model(_small_config(), rngs=autoencoder.init_rngs(0))
  mesh = spatial.spatial_mesh()  # the common mesh, every device on `spatial`
  assert dict(mesh.shape) == {"dcn_data": 1, "data": 1, "fsdp": 1, "spatial": 4}
  video = _video(9, 16, 8)  # 16 rows: 4 per device, 2 per device in the latent
  single, sharded = chunked.ChunkCodec(model), chunked.ChunkCodec(model, mesh=mesh)
  np.testing.assert_allclose(sharded.encode(video).mean, single.encode(video).mean, atol=TOL)
  # Streaming composes with it (long and large): exact against one device's whole clip.
  streamed = np.concatenate(list(streaming.stream_reconstruct_blocks(sharded, [video], 5)), 1)
  np.testing.assert_allclose(streamed, single.reconstruct(video), atol=TOL)

  # The activations really are split: the compiled encoder keeps its output split along H and
  # exchanges conv halos between neighbours (collective-permute) rather than gathering frames.
  # pylint: disable=protected-access
  with sharding.use_mesh(mesh):
    compiled = sharded._encode.lower(sharded.state, sharded._put(video)).compile()
  # pylint: enable=protected-access
  assert compiled.output_shardings[0].spec == P(None, None, "spatial")
  assert "collective-permute" in compiled.as_text()
  # The rules decide: rules that keep height whole leave the input on every device whole.
  keep = tuple((name, None if name == "height" else axes) for name, axes in sharding.DEFAULT_RULES)
  # pylint: disable-next=protected-access
  assert chunked.ChunkCodec(model, mesh=mesh, rules=keep)._put(video).sharding.is_fully_replicated
