"""Exact streaming (`bootvae_jax.inference.streaming`): chunk-by-chunk encode / decode equals the
whole clip to 1e-5 for every chunk length the frame rule allows, for the ProMAG base, grown 8x
and 16x models and a decoder that looks ahead (centred convs, trilinear time upsampling).

Tiny widths and frames keep compilation (one per chunk shape) to a few seconds per model.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from bootvae_jax import inference
from bootvae_jax import models
from bootvae_jax.inference import chunked
from bootvae_jax.inference import streaming
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder
from bootvae_jax.models import streaming as models_streaming
from bootvae_jax.models import progressive
from bootvae_jax.ops import conv as conv_ops

import tiny

TOL = 1e-5


def _video(t: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (1, t, size, size, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def _xla_convs(request):
  """Tests trace convs with `ops.conv`'s "xla" implementation, which compiles fastest on CPU,
  except those of `base_codec`, which cover the CPU default."""
  if "base_codec" in request.fixturenames:
    yield
    return
  with conv_ops.forced_implementation("xla"):
    yield


def _small_config(levels: int = 0, *, lookahead: bool = False, patch_size: int = 1):
  """A 2-level base (4x time, 2x space) grown by `levels`: the least to compile.

  `lookahead`: a decoder whose convs are centred in time and whose upsamplers are trilinear,
  so each output frame needs later latents (held back between chunks).
  """
  config = tiny.tiny_model_config((1, 1), patch_size=patch_size)
  if lookahead:
    config.decoder.update(upsample=("trilinear:st", "trilinear:t"), time_padding="centred")
  config.growth = autoencoder.default_model_config().growth
  config.growth.levels = levels
  return config


def _randomise_adanorm(model, seed: int = 1) -> None:
  """AdaNorm starts as the identity; random weights make its frame indexing matter."""
  rng = np.random.default_rng(seed)

  def move(path, variable):
    if "adanorm" not in map(str, path):
      return variable
    return variable.replace(0.3 * rng.standard_normal(variable.shape).astype(np.float32))

  nnx.update(model, nnx.map_state(move, nnx.state(model, nnx.Param)))


def _check_stream(codec, video, chunk_frames, chunk_latents):
  whole = codec.encode(video)
  decoded = codec.decode(whole.mean)
  for chunk in chunk_frames:
    posterior = inference.stream_encode(codec, video, chunk)
    assert posterior.mean.shape == whole.mean.shape
    np.testing.assert_allclose(posterior.mean, whole.mean, atol=TOL, err_msg=f"chunk {chunk}")
    np.testing.assert_allclose(posterior.logvar, whole.logvar, atol=TOL)
  for chunk in chunk_latents:
    out = inference.stream_decode(codec, whole.mean, chunk)
    assert out.shape == decoded.shape
    np.testing.assert_allclose(out, decoded, atol=TOL, err_msg=f"chunk_latents {chunk}")
  return whole, decoded


@pytest.fixture(scope="module")
def base_codec():
  model = models.build_model(_small_config(), rngs=autoencoder.init_rngs(0))
  return chunked.ChunkCodec(model)


def test_base_streams_exactly_for_every_chunk_length(base_codec):
  # 13 = 1 + 4·3 frames: first chunks of 5 or 9 frames (then 4), 2 or 3 latents (then 1 or 2);
  # chunk 5 runs three chunks, so states pass from a later chunk too. (A chunk as long as the
  # clip is the whole-clip computation itself.)
  _check_stream(base_codec, _video(13, 4), (5, 9), (2, 3))
  # One compilation per chunk shape: whole clip, and first / later chunks (the last chunk is
  # padded to the later ones' shape and trimmed, since the model is causal).
  assert base_codec.traces == {"encode": 1, "decode": 1, "encode_step": 4, "decode_step": 4}


# Every chunk length shorter than the clip; more chunks per clip add run time, not
# compilations (the base test covers states handed on by a later chunk).
@pytest.mark.parametrize(
    "levels,frames,chunks,latent_chunks,patch_size",
    [
        (1, 17, (9,), (2,), 2),  # 8x: 3 latents; 2x2 pixel patches (per frame: still exact)
        (2, 33, (17,), (2,), 1),  # 16x: 3 latents
    ],
)
def test_grown_models_stream_exactly(levels, frames, chunks, latent_chunks, patch_size):
  config = _small_config(levels, patch_size=patch_size)
  model = models.build_model(config, rngs=autoencoder.init_rngs(0))
  _randomise_adanorm(model)
  assert (model.temporal_factor, model.spatial_factor) == (4 * 2**levels, 2 * patch_size)
  _check_stream(chunked.ChunkCodec(model), _video(frames, 4 * patch_size), chunks, latent_chunks)


def test_decoder_that_looks_ahead_streams_exactly():
  model = models.build_model(_small_config(lookahead=True), rngs=autoencoder.init_rngs(0))
  codec = chunked.ChunkCodec(model)
  assert codec.decoder_looks_ahead and not codec.encoder_looks_ahead
  z = np.random.default_rng(3).standard_normal((1, 4, 2, 2, 4)).astype(np.float32)
  decoded = codec.decode(z)
  for chunk in (2, 3):
    pieces = list(streaming.stream_decode_blocks(codec, [z], chunk))
    out = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(out, decoded, atol=TOL, err_msg=f"chunk_latents {chunk}")
  # Frames that need later latents come one chunk late, the last chunk flushes them.
  counts = [p.shape[1] for p in streaming.stream_decode_blocks(codec, [z], 2)]
  assert sum(counts) == 13 and counts[-1] > 4, counts
  # Reconstructing (not fused: decoded frames lag their chunk) trims the padding all the same.
  video = _video(11, 4, seed=5)
  padded = np.concatenate([video, np.repeat(video[:, -1:], 2, axis=1)], axis=1)
  expected = codec.decode(codec.encode(padded).mean)[:, :11]
  out = np.concatenate(list(streaming.stream_reconstruct_blocks(codec, [video], 5)), axis=1)
  np.testing.assert_allclose(out, expected, atol=TOL)
  assert "reconstruct_step" not in codec.traces


def test_any_length_and_uneven_blocks_reconstruct_exactly(base_codec):
  # 11 frames are padded to 13 (last frame repeated) and trimmed back to 11.
  video = _video(11, 4, seed=4)
  padded = np.concatenate([video, np.repeat(video[:, -1:], 2, axis=1)], axis=1)
  expected = base_codec.decode(base_codec.encode(padded).mean)[:, :11]
  bounds = [0, 1, 3, 4, 9, 10, 11]
  pulled = []

  def blocks():
    for a, b in zip(bounds, bounds[1:]):
      pulled.append(b)
      yield video[:, a:b]

  pieces = streaming.stream_reconstruct_blocks(base_codec, blocks(), chunk_frames=5)
  first = next(pieces)
  assert max(pulled) == 9 and first.shape[1] == 5  # chunk 1 is out before the rest is read
  out = np.concatenate([first] + list(pieces), axis=1)
  assert out.shape == video.shape
  np.testing.assert_allclose(out, expected, atol=TOL)
  assert base_codec.traces["reconstruct_step"] == 2  # encode + decode fused: first, later
  # Unbatched arrays and iterators of unbatched blocks give unbatched results.
  latent = inference.stream_encode(base_codec, iter(video[0, :9].reshape(3, 3, 4, 4, 3)), 5)
  assert latent.mean.shape == (3, 2, 2, 4)


def test_a_long_stream_holds_what_a_short_one_holds(base_codec):
  """Memory is bounded by a chunk: after 60 chunks the live device arrays are those after 3
  (each step's states replace the last), and each chunk's host memory is handed back."""

  def live_after(chunks: int) -> tuple[int, int]:
    frames = 1 + 4 * chunks
    video = _video(frames, 4, seed=chunks)
    pieces = streaming.stream_reconstruct_blocks(base_codec, [video], chunk_frames=5)
    count = sum(piece.shape[1] for piece in pieces)
    arrays = jax.live_arrays()
    return count, len(arrays), sum(a.nbytes for a in arrays)

  live_after(3)  # compiled, parameters on the device
  short, long = live_after(3), live_after(60)
  assert (short[0], long[0]) == (13, 241)
  assert long[1:] == short[1:]
  assert chunked._malloc_trim() is not None  # Linux / glibc: the per-chunk trim is active


def test_clip_wide_norms_are_refused_with_the_official_tiling():
  config = architectures.odvae_variant(4, hidden_size=8, hidden_size_mult=[1, 1, 1, 1])
  config.num_groups = 4
  model = models.build_model(config, rngs=autoencoder.init_rngs(0))
  assert "clip-wide GroupNorm" in models_streaming.stream_blocker(model)
  with pytest.raises(ValueError, match=r"cannot be streamed exactly: .*tiled_encode"):
    inference.stream_encode(model, _video(9, 16), 5)


def test_bad_chunk_lengths_name_valid_ones(base_codec):
  with pytest.raises(ValueError, match=r"chunk_frames=8: .* 1\+4k frames \(k ≥ 1, e\.g\. 5"):
    inference.stream_encode(base_codec, _video(9, 4), 8)
  with pytest.raises(ValueError, match="chunk_frames=1"):
    inference.stream_encode(base_codec, _video(9, 4), 1)
  with pytest.raises(ValueError, match="chunk_latents=1"):
    inference.stream_decode(base_codec, np.zeros((1, 3, 2, 2, 4), np.float32), 1)
  with pytest.raises(ValueError, match="3x4 is not divisible"):
    inference.stream_encode(base_codec, _video(9, 4)[:, :, :3], 5)
