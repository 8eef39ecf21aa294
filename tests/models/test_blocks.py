"""Tests for `bootvae_jax.models.blocks`: shapes, frame rules, values and spec parsing of every
kind.

Shapes are checked abstractly (`nnx.eval_shape`: no compilation, no FLOPs); the value checks
(which input frames an output frame reads; what a resampler with a one-tap kernel or a mid
block with closed gates outputs) run one small jitted block each.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bootvae_jax.models import blocks

CONV = blocks.ConvSettings(time_padding="causal")
NORM = blocks.NormSettings(kind="groupnorm_frame", num_groups=4, eps=1e-6)
B, C, H, W = 1, 8, 16, 16


def _out_shape(make, x_shape):
  """Output shape of `make()(x)` without allocating parameters or running anything."""
  module = nnx.eval_shape(make)
  out = nnx.eval_shape(lambda m, x: m(x), module, jax.ShapeDtypeStruct(x_shape, jnp.float32))
  return module, out.shape


def _spec(spec: str, allowed) -> blocks.ResampleSpec:
  return blocks.ResampleSpec.parse(spec, allowed, "test")


def _one_tap(conv, tap, gains=None) -> None:
  """Sets `conv` (C → G·C channels) to read only kernel position `tap` (t, y, x): output
  channel g·C + c = gains[g] · input channel c, no bias. A resampler then only moves pixels,
  so its output is known by hand."""
  cin, cout = conv.kernel.shape[-2:]
  gains = np.ones(cout // cin) if gains is None else np.asarray(gains)
  kernel = np.zeros(conv.kernel.shape, np.float32)
  kernel[tap] = np.concatenate([g * np.eye(cin) for g in gains], axis=1)
  conv.kernel.set_value(jnp.asarray(kernel))
  conv.bias.set_value(jnp.zeros(conv.bias.shape))


def _integers(shape, seed=0) -> np.ndarray:
  """Small integers: every sum the blocks form of them is exact in float32."""
  return np.random.default_rng(seed).integers(-4, 5, shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Res blocks.


@pytest.mark.parametrize("kind", ["3d", "2d", "half3d"])
@pytest.mark.parametrize("cout", [8, 16])
def test_res_block_shapes_and_kernels(kind, cout):
  module, shape = _out_shape(
      lambda: blocks.ResBlock(C, cout, kind, conv=CONV, norm=NORM, rngs=nnx.Rngs(0)),
      (B, 9, H, W, C),
  )
  assert shape == (B, 9, H, W, cout)
  kt1, kt2 = {"3d": (3, 3), "2d": (1, 1), "half3d": (3, 1)}[kind]
  assert module.conv1.kernel.shape == (kt1, 3, 3, C, cout)
  assert module.conv2.kernel.shape == (kt2, 3, 3, cout, cout)
  if cout == C:
    assert module.nin_shortcut is None
  else:
    assert module.nin_shortcut.kernel.shape == (1, 1, 1, C, cout)
  # 2D blocks always normalise per frame, even inside a model with clip-wide norms.
  clip = blocks.NormSettings(kind="groupnorm_clip", num_groups=4)
  module = nnx.eval_shape(
      lambda: blocks.ResBlock(C, cout, kind, conv=CONV, norm=clip, rngs=nnx.Rngs(0))
  )
  expected_norm = "groupnorm_frame" if kind == "2d" else "groupnorm_clip"
  assert module.norm1.kind == module.norm2.kind == expected_norm


@pytest.mark.parametrize("cout", [8, 16])
def test_gated_res_block_starts_as_its_shortcut_and_learns_its_gate(cout):
  """model.residual_gate: the branch times a scalar that starts at 0, so the block starts as
  its shortcut; the gate gets a gradient (the branch's convs only once it moves)."""
  gated = blocks.ConvSettings(time_padding="causal", residual_gate=True)
  block = blocks.ResBlock(C, cout, "3d", conv=gated, norm=NORM, rngs=nnx.Rngs(0))
  assert block.gate[...].shape == () and float(block.gate[...]) == 0.0
  x = jax.random.normal(jax.random.key(1), (B, 5, 8, 8, C))
  shortcut = x if block.nin_shortcut is None else block.nin_shortcut(x)
  np.testing.assert_array_equal(np.asarray(block(x)), np.asarray(shortcut))
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(block)
  assert abs(float(grads["gate"][...])) > 0
  np.testing.assert_array_equal(np.asarray(grads["conv2"]["kernel"][...]), 0.0)
  ungated = blocks.ResBlock(C, cout, "3d", conv=CONV, norm=NORM, rngs=nnx.Rngs(0))
  assert ungated.gate is None


def test_bad_res_block_kind_raises_a_clear_error():
  with pytest.raises(ValueError, match=r"unknown res block kind '4d'.*'3d', '2d', 'half3d'"):
    blocks.ResBlock(C, C, "4d", conv=CONV, norm=NORM, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind,reads", [("2d", {3}), ("half3d", {1, 2, 3}), ("3d", {0, 1, 2, 3})])
def test_res_block_frame_dependencies(kind, reads):
  """With causal convs and per-frame norms output frame 3 depends only on input frames <= 3:
  a 2d block on frame 3 alone; half3d on the 3 frames its one temporal conv sees; 3d on
  3 - 2 - 2 < 0, i.e. frames 0..3 (frame 0 stands in for the missing ones)."""
  block = blocks.ResBlock(C, C, kind, conv=CONV, norm=NORM, rngs=nnx.Rngs(0))
  run = nnx.jit(lambda m, x: m(x))
  x = np.random.default_rng(0).standard_normal((B, 7, 8, 8, C)).astype(np.float32)
  y = np.asarray(run(block, x))
  changed = set()
  for t in range(7):
    x2 = x.copy()
    x2[:, t] += 1.0
    if np.abs(np.asarray(run(block, x2))[:, 3] - y[:, 3]).max() > 0:
      changed.add(t)
  assert changed == reads


# ----------------------------------------------------------------------------------------------
# Resampler specs.


def test_resample_spec_parse():
  assert _spec("conv3d:st", blocks.DOWNSAMPLE_KINDS) == blocks.ResampleSpec("conv3d", 2, 2)
  assert _spec("conv3d:s", blocks.DOWNSAMPLE_KINDS) == blocks.ResampleSpec("conv3d", 1, 2)
  assert _spec("conv3d:t", blocks.DOWNSAMPLE_KINDS) == blocks.ResampleSpec("conv3d", 2, 1)
  assert _spec("d2s:st", blocks.UPSAMPLE_KINDS) == blocks.ResampleSpec("d2s", 2, 2)
  assert _spec("", blocks.UPSAMPLE_KINDS) is None


@pytest.mark.parametrize(
    "spec,allowed",
    [
        ("conv3d", blocks.DOWNSAMPLE_KINDS),  # no axes
        ("conv3d:", blocks.DOWNSAMPLE_KINDS),  # empty axes
        ("conv3d:x", blocks.DOWNSAMPLE_KINDS),  # unknown axis
        ("conv3d:sth", blocks.DOWNSAMPLE_KINDS),
        ("pool:s", blocks.DOWNSAMPLE_KINDS),  # unknown kind
        ("nearest3d:s", blocks.DOWNSAMPLE_KINDS),  # an upsampler where a downsampler belongs
        ("conv3d:st", blocks.UPSAMPLE_KINDS),
        ("conv2d:st", blocks.DOWNSAMPLE_KINDS),  # a per-frame kind cannot resample time
    ],
)
def test_resample_spec_parse_rejects_bad_specs(spec, allowed):
  with pytest.raises(ValueError, match=r"model\.encoder\.downsample\[2\]=.*is not a resampler"):
    blocks.ResampleSpec.parse(spec, allowed, "model.encoder.downsample[2]")


def test_per_frame_resamplers_reject_time_factors():
  """Parsing refuses `conv2d:st` (tests/models/test_registry.py); a spec built by hand is
  refused by the module."""
  with pytest.raises(ValueError, match="cannot downsample time"):
    blocks.ConvDownsample(C, blocks.ResampleSpec("conv2d", 2, 2), conv=CONV, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cannot upsample time"):
    blocks.NearestUpsample(C, blocks.ResampleSpec("nearest2d", 2, 2), conv=CONV, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------
# Down- and upsamplers: `1 + 2k` <-> `1 + k` frames, H and W halved / doubled.


@pytest.mark.parametrize(
    "spec,frames_in,frames_out,space",
    [
        ("conv3d:s", 9, 9, 2),
        ("conv3d:t", 9, 5, 1),
        ("conv3d:st", 9, 5, 2),
        ("conv3d:st", 17, 9, 2),
        ("conv3d:st", 1, 1, 2),
        ("conv2d:s", 9, 9, 2),
    ],
)
def test_downsample_shapes(spec, frames_in, frames_out, space):
  parsed = _spec(spec, blocks.DOWNSAMPLE_KINDS)
  module, shape = _out_shape(
      lambda: blocks.make_downsample(C, parsed, conv=CONV, rngs=nnx.Rngs(0)),
      (B, frames_in, H, W, C),
  )
  assert isinstance(module, blocks.ConvDownsample)
  assert shape == (B, frames_out, H // space, W // space, C)
  assert module.conv.kernel.shape[0] == (1 if spec.startswith("conv2d") else 3)


@pytest.mark.parametrize("spec", ["conv3d:st", "conv3d:s", "conv3d:t", "conv2d:s"])
def test_downsample_with_a_one_tap_kernel_subsamples(spec):
  """The kernel's last time tap is the current frame (causal: frames 2j-2..2j for output j);
  with stride 2 in space and padding only at the bottom/right, tap (0, 0) is pixel (2y, 2x) and
  tap (2, 2) reads pixel (2y+2, 2x+2), zero padding past the last row and column."""
  parsed = _spec(spec, blocks.DOWNSAMPLE_KINDS)
  module = blocks.make_downsample(C, parsed, conv=CONV, rngs=nnx.Rngs(0))
  kt, ft, fs = module.conv.kernel.shape[0], parsed.time_factor, parsed.space_factor
  x = _integers((B, 9, 8, 8, C))
  run = nnx.jit(lambda m, x: m(x))
  centre = 0 if fs == 2 else 1  # 'same' padding centres a stride-1 kernel
  _one_tap(module.conv, (kt - 1, centre, centre))
  np.testing.assert_array_equal(np.asarray(run(module, x)), x[:, ::ft, ::fs, ::fs])
  if fs == 2:
    _one_tap(module.conv, (kt - 1, 2, 2))
    y = np.asarray(run(module, x))
    np.testing.assert_array_equal(y[:, :, :-1, :-1], x[:, ::ft, 2::2, 2::2])
    np.testing.assert_array_equal(y[:, :, -1], 0.0)
    np.testing.assert_array_equal(y[:, :, :, -1], 0.0)


@pytest.mark.parametrize(
    "spec,cls,frames_in,frames_out,space",
    [
        ("nearest3d:s", blocks.NearestUpsample, 5, 5, 2),
        ("nearest3d:st", blocks.NearestUpsample, 5, 9, 2),
        ("nearest3d:st", blocks.NearestUpsample, 1, 1, 2),
        ("nearest2d:s", blocks.NearestUpsample, 5, 5, 2),
        ("trilinear:st", blocks.TrilinearUpsample, 5, 9, 2),
        ("trilinear:st", blocks.TrilinearUpsample, 1, 1, 2),
        ("d2s:s", blocks.DepthToSpaceUpsample, 5, 5, 2),
        ("d2s:t", blocks.DepthToSpaceUpsample, 5, 9, 1),
        ("d2s:st", blocks.DepthToSpaceUpsample, 5, 9, 2),
        ("d2s:st", blocks.DepthToSpaceUpsample, 3, 5, 2),
    ],
)
def test_upsample_shapes(spec, cls, frames_in, frames_out, space):
  parsed = _spec(spec, blocks.UPSAMPLE_KINDS)
  module, shape = _out_shape(
      lambda: blocks.make_upsample(C, parsed, conv=CONV, rngs=nnx.Rngs(0)),
      (B, frames_in, H // 2, W // 2, C),
  )
  assert isinstance(module, cls)
  assert shape == (B, frames_out, H // 2 * space, W // 2 * space, C)


def _repeat_space(x: np.ndarray) -> np.ndarray:
  return x.repeat(2, axis=2).repeat(2, axis=3)


@pytest.mark.parametrize("spec", ["nearest3d:s", "nearest3d:st", "nearest2d:s"])
def test_nearest_upsample_with_a_one_tap_kernel_repeats_pixels_and_frames(spec):
  """Each pixel becomes a 2×2 block; in time, channel group s of latent frame k becomes frame
  2k + s before the first frame is dropped: output frames 2k-1 and 2k are latent k, read
  through group 0 and group 1 (gains 1 and 2 here, to tell them apart)."""
  parsed = _spec(spec, blocks.UPSAMPLE_KINDS)
  module = blocks.make_upsample(C, parsed, conv=CONV, rngs=nnx.Rngs(0))
  kt, ft = module.conv.kernel.shape[0], parsed.time_factor
  _one_tap(module.conv, (kt // 2, 1, 1), gains=[1.0, 2.0][:ft])
  x = _integers((B, 5, 4, 4, C))
  y = np.asarray(nnx.jit(lambda m, x: m(x))(module, x))
  up = _repeat_space(x)
  if ft == 1:
    np.testing.assert_array_equal(y, up)
  else:  # frame n is frame n + 1 = 2k + s before the drop
    expected = [(s + 1) * up[:, k] for k, s in (divmod(n + 1, 2) for n in range(9))]
    np.testing.assert_array_equal(y, np.stack(expected, axis=1))


def test_d2s_upsample_with_a_one_tap_kernel_places_channel_groups():
  """d2s:st: conv channel group g = 4s + 2fy + fx of latent frame k and pixel (i, j) becomes
  frame 2k + s (before the first frame is dropped), pixel (2i + fy, 2j + fx). Group g gets gain
  g + 1, so a group in the wrong place changes the output."""
  module = blocks.DepthToSpaceUpsample(
      C, _spec("d2s:st", blocks.UPSAMPLE_KINDS), conv=CONV, rngs=nnx.Rngs(0)
  )
  _one_tap(module.conv, (2, 1, 1), gains=np.arange(1.0, 9.0))  # causal: tap 2 is frame k
  x = _integers((B, 3, 4, 4, C))
  y = np.asarray(nnx.jit(lambda m, x: m(x))(module, x))
  assert y.shape == (B, 5, 8, 8, C)
  for n in range(5):
    k, s = divmod(n + 1, 2)
    for fy in range(2):
      for fx in range(2):
        gain = 4 * s + 2 * fy + fx + 1
        np.testing.assert_array_equal(y[:, n, fy::2, fx::2], gain * x[:, k], err_msg=(n, fy, fx))


def test_trilinear_upsample_with_a_one_tap_kernel_interpolates_a_ramp():
  """On x = t + i/2 + j/4 + c (frame t, row i, column j, channel c), linear interpolation is
  exact: frame 0 stays; frames 1..4 become 8 frames at source positions k/2 - 1/4 (PyTorch's
  align_corners=False), clamped to the ends; rows and columns likewise."""
  module = blocks.TrilinearUpsample(
      C, _spec("trilinear:st", blocks.UPSAMPLE_KINDS), conv=CONV, rngs=nnx.Rngs(0)
  )
  _one_tap(module.conv, (2, 1, 1))
  t, i, j, c = np.meshgrid(np.arange(5), np.arange(4), np.arange(4), np.arange(C), indexing="ij")
  x = (t + i / 2 + j / 4 + c).astype(np.float32)[None]
  y = np.asarray(nnx.jit(lambda m, x: m(x))(module, x))
  half = lambda size: np.clip(np.arange(2 * size) / 2 - 0.25, 0, size - 1)
  frames = np.concatenate([[0.0], 1 + half(4)])  # [0, 1, 1.25, 1.75, ..., 3.75, 4]
  rows = half(4)  # [0, 0.25, 0.75, ..., 2.75, 3]
  expected = (
      frames[:, None, None, None]
      + rows[None, :, None, None] / 2
      + rows[None, None, :, None] / 4
      + np.arange(C)[None, None, None, :]
  )
  np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-5)


def test_no_resampler_for_an_empty_spec():
  assert blocks.make_downsample(C, None, conv=CONV, rngs=nnx.Rngs(0)) is None
  assert blocks.make_upsample(C, None, conv=CONV, rngs=nnx.Rngs(0)) is None


def _frames_reading(module, frames_in, out_frame):
  """The set of input frames that output frame `out_frame` depends on (by perturbation)."""
  run = nnx.jit(lambda m, x: m(x))
  x = np.random.default_rng(1).standard_normal((B, frames_in, 8, 8, C)).astype(np.float32)
  y = np.asarray(run(module, x))
  reads = set()
  for t in range(frames_in):
    x2 = x.copy()
    x2[:, t] += 1.0
    if np.abs(np.asarray(run(module, x2))[:, out_frame] - y[:, out_frame]).max() > 0:
      reads.add(t)
  return reads


def test_causal_downsample_output_frame_j_reads_frames_2j_minus_2_to_2j():
  module = blocks.ConvDownsample(
      C, _spec("conv3d:st", blocks.DOWNSAMPLE_KINDS), conv=CONV, rngs=nnx.Rngs(0)
  )
  assert _frames_reading(module, 9, 0) == {0}
  assert _frames_reading(module, 9, 3) == {4, 5, 6}


def test_trilinear_upsample_keeps_frame_zero_apart():
  """OD-VAE: frame 0 is upsampled alone, so before the (causal) conv nothing mixes into it;
  output frame 2j-1 / 2j interpolates input frames j-1..j+1 (clamped to 1..T-1)."""
  module = blocks.TrilinearUpsample(
      C,
      _spec("trilinear:st", blocks.UPSAMPLE_KINDS),
      conv=blocks.ConvSettings(time_padding="causal"),
      rngs=nnx.Rngs(0),
  )
  assert _frames_reading(module, 5, 0) == {0}
  assert _frames_reading(module, 5, 1) == {0, 1}  # conv reads upsampled 0 (frame 0) and 1


def test_d2s_upsample_maps_latent_k_to_frames_2k_minus_1_and_2k():
  module = blocks.DepthToSpaceUpsample(
      C, _spec("d2s:st", blocks.UPSAMPLE_KINDS), conv=CONV, rngs=nnx.Rngs(0)
  )
  # Output frames 2k-1 and 2k come from latent k and (causal 3-tap conv) latents k-2, k-1.
  assert _frames_reading(module, 5, 0) == {0}
  assert _frames_reading(module, 5, 3) == {0, 1, 2}
  assert _frames_reading(module, 5, 4) == {0, 1, 2}


# ----------------------------------------------------------------------------------------------
# Mid block and attention kinds.


@pytest.mark.parametrize("attention", ["spatial", "spatiotemporal", "none"])
def test_mid_block_shapes(attention):
  module, shape = _out_shape(
      lambda: blocks.MidBlock(
          C, "3d", attention, conv=CONV, norm=NORM, attention_norm=NORM, rngs=nnx.Rngs(0)
      ),
      (B, 5, 4, 4, C),
  )
  assert shape == (B, 5, 4, 4, C)
  assert (module.attn_1 is None) == (attention == "none")


def _gated_mid_block(attention: str) -> blocks.MidBlock:
  """A mid block whose res blocks have `model.residual_gate` (gates start at 0: each res block
  starts as the identity)."""
  gated = blocks.ConvSettings(time_padding="causal", residual_gate=True)
  return blocks.MidBlock(
      C, "3d", attention, conv=gated, norm=NORM, attention_norm=NORM, rngs=nnx.Rngs(0)
  )


@pytest.mark.parametrize("attention", ["spatial", "spatiotemporal", "none"])
def test_mid_block_with_closed_gates_is_its_attention(attention):
  """Closed gates: the mid block is its attention alone (the identity without one); with the
  attention's output projection zeroed too, it is the identity for every kind."""
  module = _gated_mid_block(attention)
  run = nnx.jit(lambda m, x: m(x))
  x = np.random.default_rng(2).standard_normal((B, 5, 4, 4, C)).astype(np.float32)
  y = np.asarray(run(module, x))
  if attention == "none":
    np.testing.assert_array_equal(y, x)
    return
  np.testing.assert_allclose(y, np.asarray(run(module.attn_1, x)), rtol=0, atol=1e-6)
  assert np.abs(y - x).max() > 1e-3  # the attention itself is not the identity
  # Both kinds add their output projection to the input (one residual around the chain).
  proj = module.attn_1.proj_out if attention == "spatial" else module.attn_1.proj_out_t
  proj.kernel.set_value(jnp.zeros(proj.kernel.shape))
  proj.bias.set_value(jnp.zeros(proj.bias.shape))
  np.testing.assert_array_equal(np.asarray(run(module, x)), x)


def test_mid_block_is_block_attention_block_in_that_order():
  """Open gates: the output is block_2(attn_1(block_1(x))), and the order matters."""
  module = _gated_mid_block("spatial")
  for block in (module.block_1, module.block_2):
    block.gate.set_value(jnp.ones(()))
  run = nnx.jit(lambda m, x: m(x))
  x = np.random.default_rng(3).standard_normal((B, 5, 4, 4, C)).astype(np.float32)
  by_hand = run(module.block_2, run(module.attn_1, run(module.block_1, x)))
  np.testing.assert_allclose(np.asarray(run(module, x)), np.asarray(by_hand), rtol=0, atol=1e-5)
  reversed_order = run(module.block_1, run(module.attn_1, run(module.block_2, x)))
  assert np.abs(np.asarray(reversed_order) - np.asarray(by_hand)).max() > 1e-3


def test_bad_attention_kind_raises_a_clear_error():
  with pytest.raises(ValueError, match=r"unknown attention kind 'temporal'"):
    blocks.make_attention("temporal", C, norm=NORM, conv=CONV, rngs=nnx.Rngs(0))
