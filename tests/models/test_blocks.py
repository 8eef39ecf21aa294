"""Tests for `bootvae_jax.models.blocks`: shapes, frame rules and spec parsing of every kind.

Shapes are checked abstractly (`nnx.eval_shape`: no compilation, no FLOPs); the few value
checks (which input frames an output frame reads) run one small jitted block each.
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


def test_bad_attention_kind_raises_a_clear_error():
  with pytest.raises(ValueError, match=r"unknown attention kind 'temporal'"):
    blocks.make_attention("temporal", C, norm=NORM, conv=CONV, rngs=nnx.Rngs(0))
