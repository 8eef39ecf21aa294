"""Clip sampling and per-clip transforms (bootvae_jax/data/transforms.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.data import transforms


def spec(**overrides) -> transforms.ClipSpec:
  fields = dict(
      num_frames=5,
      min_stride=2,
      max_stride=2,
      resize_short_side=0,
      crop_size=(32, 32),
      random_crop=True,
      random_flip=True,
  )
  fields.update(overrides)
  return transforms.ClipSpec(**fields)


def test_deterministic_indices_follow_position():
  clip = spec()  # 5 frames at stride 2: a span of 9
  assert clip.min_span == 9
  np.testing.assert_array_equal(
      transforms.sample_frame_indices(20, clip, None, position=0.0), [0, 2, 4, 6, 8]
  )
  np.testing.assert_array_equal(
      transforms.sample_frame_indices(20, clip, None, position=1.0), [11, 13, 15, 17, 19]
  )
  np.testing.assert_array_equal(transforms.sample_frame_indices(20, clip, None), [6, 8, 10, 12, 14])


def test_random_stride_stays_in_range_and_fits_the_video():
  clip = spec(min_stride=1, max_stride=4)
  strides = set()
  for seed in range(300):
    indices = transforms.sample_frame_indices(10, clip, np.random.default_rng(seed))
    assert indices.shape == (5,) and indices.dtype == np.int64
    assert indices[0] >= 0 and indices[-1] <= 9
    steps = np.diff(indices)
    assert np.all(steps == steps[0])
    strides.add(int(steps[0]))
  # 10 frames fit 5 frames at stride <= 2 only; stride 3 and 4 are never offered.
  assert strides == {1, 2}


def test_same_rng_seed_same_indices():
  clip = spec(min_stride=1, max_stride=3)
  first = transforms.sample_frame_indices(100, clip, np.random.default_rng(7))
  second = transforms.sample_frame_indices(100, clip, np.random.default_rng(7))
  np.testing.assert_array_equal(first, second)


def test_too_short_video_raises():
  with pytest.raises(transforms.ClipTooShortError, match="has 8 frames.*needs 9"):
    transforms.sample_frame_indices(8, spec(), np.random.default_rng(0))


def test_frame_stride_forms():
  assert transforms.stride_range(3) == (3, 3)
  assert transforms.stride_range((1, 8)) == (1, 8)


@pytest.mark.parametrize(
    "size, short_side, crop, expected",
    [
        ((720, 1280), 64, (32, 32), (64, 114)),
        ((144, 176), 0, (32, 32), (144, 176)),  # no resize
        ((20, 40), 0, (32, 32), (32, 64)),  # too small for the crop: scaled up to fit
        ((272, 640), 48, (48, 32), (48, 113)),
    ],
)
def test_resized_size(size, short_side, crop, expected):
  assert (
      transforms.resized_size(*size, spec(resize_short_side=short_side, crop_size=crop)) == expected
  )


def test_resize_keeps_a_constant_colour():
  frames = np.empty((2, 48, 64, 3), np.uint8)
  frames[:] = (10, 120, 250)
  resized = transforms.resize_frames(frames, (24, 40))
  assert resized.shape == (2, 24, 40, 3) and resized.dtype == np.uint8
  assert np.abs(resized.astype(int) - (10, 120, 250)).max() <= 1


def test_centre_crop_is_exact():
  frames = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
  clip = transforms.crop_and_flip(frames, spec(crop_size=(2, 4)), None)
  np.testing.assert_array_equal(clip, frames[:, 2:4, 2:6])


def test_random_crop_and_flip_are_reproducible_and_flip_half_the_time():
  frames = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
  clip_spec = spec(crop_size=(32, 32))
  flips = 0
  for seed in range(200):
    clip = transforms.crop_and_flip(frames, clip_spec, np.random.default_rng(seed))
    again = transforms.crop_and_flip(frames, clip_spec, np.random.default_rng(seed))
    np.testing.assert_array_equal(clip, again)
    assert clip.shape == (3, 32, 32, 3)
    rng = np.random.default_rng(seed)
    top, left = transforms.crop_offsets(40, 50, (32, 32), rng)
    window = frames[:, top : top + 32, left : left + 32]
    if np.array_equal(clip, window[:, :, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(clip, window)
  assert 70 <= flips <= 130


def test_no_flip_without_random_flip():
  frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  for seed in range(20):
    clip = transforms.crop_and_flip(frames, spec(random_flip=False), np.random.default_rng(seed))
    np.testing.assert_array_equal(clip, frames)


def test_unit_range_exact_in_numpy_and_jax():
  values = np.array([0, 127, 128, 255], np.uint8)
  expected = np.array([-1.0, -0.5 / 127.5, 0.5 / 127.5, 1.0], np.float32)
  result = transforms.to_unit_range(values)
  assert result.dtype == np.float32
  np.testing.assert_allclose(result, expected, rtol=0, atol=1e-7)
  on_device = jax.jit(transforms.to_unit_range)(jnp.arange(256, dtype=jnp.uint8))
  assert on_device.dtype == jnp.float32
  assert float(on_device.min()) == -1.0 and float(on_device.max()) == 1.0


def test_uint8_round_trip():
  values = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(transforms.to_uint8(transforms.to_unit_range(values)), values)
