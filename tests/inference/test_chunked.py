"""Tests for cross-faded chunked reconstruction (`bootvae_jax.inference.chunked`) with a tiny
causal model: 4x temporal, 8x spatial, 16x16 frames, 5-frame chunks (one compilation each for
the shapes used here)."""

import numpy as np
import pytest

from bootvae_jax.inference import chunked

CHUNK = 5
TOL = 1e-5


def _video(t: int, batch: int | None = None, seed: int = 0) -> np.ndarray:
  shape = (t, 16, 16, 3) if batch is None else (batch, t, 16, 16, 3)
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def codec(tiny_model):
  return chunked.ChunkCodec(tiny_model)


# ----------------------------------------------------------------------------------------------
# Pure pieces.


def test_chunk_starts():
  assert chunked.chunk_starts(1, 17, 4) == [0]
  assert chunked.chunk_starts(17, 17, 4) == [0]
  assert chunked.chunk_starts(18, 17, 4) == [0, 13]
  assert chunked.chunk_starts(30, 17, 4) == [0, 13]
  assert chunked.chunk_starts(31, 17, 4) == [0, 13, 26]
  assert chunked.chunk_starts(15, 5, 0) == [0, 5, 10]
  with pytest.raises(ValueError, match="at least one frame"):
    chunked.chunk_starts(0, 5, 1)


@pytest.mark.parametrize("overlap", [1, 2, 4, 7])
def test_crossfade_weights_are_linear_and_sum_to_one(overlap):
  w = chunked.crossfade_weights(overlap)
  assert w.shape == (overlap,)
  assert np.all((w > 0) & (w < 1))
  # Linear ramp from the earlier chunk to the later one, symmetric about 1/2.
  np.testing.assert_allclose(np.diff(w), 1 / (overlap + 1), rtol=1e-6)
  np.testing.assert_allclose(w + w[::-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(chunked.crossfade_weights(4), [0.2, 0.4, 0.6, 0.8], rtol=1e-6)
  assert chunked.crossfade_weights(0).shape == (0,)


def test_tile_spans_follow_the_official_rule():
  # OD-VAE fixture call logs: 33 frames in 5-frame tiles: 8 tiles of 5; in 29: 29 then 5.
  assert chunked.tile_spans(33, 5) == [(i, i + 5) for i in range(0, 29, 4)]
  assert chunked.tile_spans(33, 29) == [(0, 29), (28, 33)]
  assert chunked.tile_spans(33, 17) == [(0, 17), (16, 33)]  # CV-VAE, N = 16
  assert chunked.tile_spans(9, 8) == [(0, 8), (7, 9)]
  assert chunked.tile_spans(9, 2) == [(i, i + 2) for i in range(8)]
  assert chunked.tile_spans(5, 29) == [(0, 5)]


# ----------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("chunk,valid", [(16, "13 or 17"), (4, "1 or 5"), (18, "17 or 21")])
def test_chunk_length_breaking_the_frame_rule_names_valid_lengths(tiny_model, chunk, valid):
  with pytest.raises(ValueError, match=rf"chunk_frames={chunk}: .*1\+4k frames \(e\.g\. {valid}\)"):
    chunked.reconstruct_long_video(tiny_model, _video(9), chunk_frames=chunk, overlap_frames=0)


def test_bad_overlap_and_frame_size_are_explained(codec):
  with pytest.raises(ValueError, match=r"overlap_frames=3 must be in \[0, 2\]"):
    chunked.reconstruct_long_video(codec, _video(9), chunk_frames=5, overlap_frames=3)
  with pytest.raises(ValueError, match="12x16 is not divisible by .* 8; .* 8x16"):
    chunked.reconstruct_long_video(codec, _video(9)[:, :12], chunk_frames=5, overlap_frames=1)
  with pytest.raises(ValueError, match=r"k ≥ 1 \(e\.g\. 5"):
    chunked.tiled_encode(codec, _video(9, batch=1), chunk_frames=1)
  with pytest.raises(ValueError, match="the video has 8 frames"):
    chunked.tiled_encode(codec, _video(8, batch=1), chunk_frames=5)


# ----------------------------------------------------------------------------------------------
# Cross-faded reconstruction.


def test_exactly_t_frames_with_one_compilation(tiny_model):
  codec = chunked.ChunkCodec(tiny_model)
  # 12 and 7 are not 1+4k; 1 and 3 are shorter than one chunk; 14 needs a padded last chunk.
  for t in (12, 1, 3, 5, 7, 9, 14):
    out = chunked.reconstruct_long_video(codec, _video(t), chunk_frames=CHUNK, overlap_frames=2)
    assert out.shape == (t, 16, 16, 3) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
  out = chunked.reconstruct_long_video(
      codec, _video(12, batch=1), chunk_frames=CHUNK, overlap_frames=1
  )
  assert out.shape == (1, 12, 16, 16, 3)
  # Every chunk, padded or not, had the same shape: traced (compiled) once.
  assert codec.traces == {"reconstruct": 1}


def test_no_overlap_each_chunk_is_the_model_on_that_chunk(codec):
  video = _video(3 * CHUNK)
  out = chunked.reconstruct_long_video(codec, video, chunk_frames=CHUNK, overlap_frames=0)
  for i in range(3):
    chunk = video[None, i * CHUNK : (i + 1) * CHUNK]
    expected = codec.decode(codec.encode(chunk).mean)[0]  # separately compiled encode, decode
    np.testing.assert_allclose(out[i * CHUNK : (i + 1) * CHUNK], expected, atol=TOL)


def test_overlap_is_a_linear_crossfade_of_the_two_chunks(codec):
  # T=7, chunk 5, overlap 2: chunks at 0 and 3, the second padded with one copy of frame 6.
  video = _video(7, seed=1)
  out = chunked.reconstruct_long_video(codec, video, chunk_frames=CHUNK, overlap_frames=2)
  first = codec.reconstruct(video[None, 0:5])[0]
  second = codec.reconstruct(np.concatenate([video[3:7], video[6:7]])[None])[0]
  w = chunked.crossfade_weights(2)[:, None, None, None]  # 1/3, 2/3 for the later chunk
  np.testing.assert_allclose(out[0:3], first[0:3], atol=TOL)
  np.testing.assert_allclose(out[3:5], (1 - w) * first[3:5] + w * second[0:2], atol=TOL)
  np.testing.assert_allclose(out[5:7], second[2:4], atol=TOL)
  assert np.max(np.abs(first[3:5] - second[0:2])) > 100 * TOL  # the blend is not vacuous


def test_batch_axis_and_batched_chunks_match_one_by_one(codec):
  # T=10 with stride 3 is three chunks: batch_chunks=2 leaves a short last group.
  videos = _video(10, batch=2, seed=2)
  singles = [
      chunked.reconstruct_long_video(codec, v, chunk_frames=CHUNK, overlap_frames=2) for v in videos
  ]
  batched = chunked.reconstruct_long_video(
      codec, videos[:1], chunk_frames=CHUNK, overlap_frames=2, batch_chunks=2
  )
  np.testing.assert_allclose(batched[0], singles[0], atol=TOL)
  both = chunked.reconstruct_long_video(codec, videos, chunk_frames=CHUNK, overlap_frames=2)
  np.testing.assert_allclose(both, np.stack(singles), atol=TOL)


def test_stream_reads_lazily_and_matches_the_whole_video(codec):
  video = _video(13, batch=1, seed=3)
  pulled = []

  def blocks():  # uneven blocks, recording how far the reader got
    for a, b in [(0, 1), (1, 3), (3, 4), (4, 9), (9, 10), (10, 13)]:
      pulled.append(b)
      yield video[:, a:b]

  stream = chunked.reconstruct_stream(codec, blocks(), chunk_frames=CHUNK, overlap_frames=2)
  first = next(stream)
  assert pulled[-1] <= 9 and first.shape[1] == CHUNK - 2  # only one chunk's frames were read
  out = np.concatenate([first] + list(stream), axis=1)
  # The whole video written out independently of the stream: chunks at 0, 3, 6, 9 (the last
  # padded with a copy of frame 12), each decoded on its own, linear cross-fades between.
  starts = chunked.chunk_starts(13, CHUNK, 2)
  assert starts == [0, 3, 6, 9]
  padded = np.concatenate([video[0], video[0, -1:]])
  w = chunked.crossfade_weights(2)[:, None, None, None]
  whole = np.zeros_like(video[0])
  for i, start in enumerate(starts):
    weight = np.ones((CHUNK, 1, 1, 1), np.float32)
    if i > 0:
      weight[:2] = w  # fading in over the first 2 frames
    if i < len(starts) - 1:
      weight[-2:] = 1 - w  # fading out over the last 2
    real = min(CHUNK, 13 - start)
    chunk = codec.reconstruct(padded[None, start : start + CHUNK])[0]
    whole[start : start + real] += (weight * chunk)[:real]
  np.testing.assert_allclose(out[0], whole, atol=TOL)


def test_latent_api_round_trips_to_the_same_reconstruction(codec):
  video = _video(11, batch=1, seed=4)
  latents = chunked.encode_chunks(codec, video, chunk_frames=CHUNK, overlap_frames=1)
  # Stride 4: chunks at 0, 4, 8 (the last padded); each 5 frames -> 2 latents of 2x2x4.
  assert latents.latents.shape == (1, 3, 2, 2, 2, 4)
  assert latents.num_frames == 11
  out = chunked.decode_chunks(codec, latents)
  whole = chunked.reconstruct_long_video(codec, video, chunk_frames=CHUNK, overlap_frames=1)
  np.testing.assert_allclose(out, whole, atol=TOL)


def test_reconstruct_tiled_any_length(codec):
  for t in (1, 7, 9):  # padded to 1, 9, 9 frames; tiles of 5 frames / 2 latents
    out = chunked.reconstruct_tiled(codec, _video(t, seed=t), chunk_frames=CHUNK)
    assert out.shape == (t, 16, 16, 3)
  video = _video(9, batch=1, seed=5)
  latent = chunked.tiled_encode(codec, video, CHUNK).mean
  assert latent.shape == (1, 3, 2, 2, 4)
  np.testing.assert_allclose(
      chunked.reconstruct_tiled(codec, video, chunk_frames=CHUNK),
      chunked.tiled_decode(codec, latent, 2),
      atol=TOL,
  )
