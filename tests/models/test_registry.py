"""The kind registries: one table per kind family, read by config validation, the JAX builder
and the PyTorch mirror (`interop/torch_model.py`, which cannot import JAX and keeps its own
twins under the same names)."""

import pytest

from bootvae_jax.interop import torch_model
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder
from bootvae_jax.models import blocks
from bootvae_jax.models import layers


def test_torch_mirror_has_every_registered_kind():
  assert set(torch_model.NORMS) == set(layers.NORM_KINDS)
  assert set(torch_model.RES_BLOCKS) == set(blocks.RES_BLOCKS)
  assert set(torch_model.RESAMPLERS) == set(blocks.RESAMPLERS)
  assert set(torch_model.ATTENTIONS) == set(blocks.ATTENTIONS)


def test_torch_res_blocks_have_the_registered_layouts():
  for kind, spec in blocks.RES_BLOCKS.items():
    assert torch_model.RES_BLOCKS[kind] == (spec.conv1, spec.conv2, spec.per_frame_norms), kind


def test_kind_lists_are_the_registries():
  assert blocks.RES_BLOCK_KINDS == ("3d", "2d", "half3d")
  assert blocks.DOWNSAMPLE_KINDS == ("conv3d", "conv2d")
  assert blocks.UPSAMPLE_KINDS == ("nearest3d", "nearest2d", "trilinear", "d2s")
  assert blocks.ATTENTION_KINDS == ("spatial", "spatiotemporal", "none")
  assert blocks.MODEL_NORM_KINDS == ("groupnorm_clip", "groupnorm_frame", "rmsnorm_frame")
  # Down- and upsamplers share one namespace (a spec names its kind alone).
  assert not set(blocks.DOWNSAMPLERS) & set(blocks.UPSAMPLERS)


def _config_error(edit) -> str:
  config = architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, num_groups=4
  )
  edit(config)
  with pytest.raises(ValueError) as info:
    autoencoder.validate_model_config(config)
  return str(info.value)


def test_validation_errors_list_the_registered_kinds():
  message = _config_error(lambda c: c.encoder.update(blocks=("3d", "4d", "3d", "3d")))
  assert message == (
      "model.encoder.blocks[1]='4d' is not a block kind; known: ('3d', '2d', 'half3d')"
  )
  message = _config_error(lambda c: c.decoder.update(norm="layernorm"))
  assert message == (
      "model.decoder.norm='layernorm'; use one of ('groupnorm_clip', 'groupnorm_frame',"
      " 'rmsnorm_frame')"
  )
  message = _config_error(lambda c: c.encoder.update(mid_attention="cross"))
  assert message == (
      "model.encoder.mid_attention='cross'; known: ('spatial', 'spatiotemporal', 'none')"
  )
  message = _config_error(lambda c: c.encoder.update(downsample=("conv2d:st", "", "", "")))
  assert message == (
      "model.encoder.downsample[0]='conv2d:st' is not a resampler spec; use '<kind>:<axes>',"
      " one of conv3d:s, conv3d:t, conv3d:st, conv2d:s (or '' for none)"
  )
  message = _config_error(lambda c: c.decoder.update(upsample=("", "d2s:s", "pixel:st", "")))
  assert message.startswith("model.decoder.upsample[2]='pixel:st' is not a resampler spec")
  assert message.endswith(
      "one of nearest3d:s, nearest3d:t, nearest3d:st, nearest2d:s, trilinear:s, trilinear:t,"
      " trilinear:st, d2s:s, d2s:t, d2s:st (or '' for none)"
  )


@pytest.mark.parametrize("spec", ["conv2d:t", "conv2d:st"])
def test_per_frame_kinds_take_space_axes_only(spec):
  """A per-frame resampler (time kernel 1) cannot resample time: refused when parsed."""
  with pytest.raises(ValueError, match="is not a resampler spec"):
    blocks.ResampleSpec.parse(spec, blocks.DOWNSAMPLE_KINDS, "model.encoder.downsample[0]")
  with pytest.raises(ValueError, match="is not a resampler spec"):
    blocks.ResampleSpec.parse(
        spec.replace("conv2d", "nearest2d"), blocks.UPSAMPLE_KINDS, "model.decoder.upsample[0]"
    )
  for kinds in (blocks.DOWNSAMPLERS, blocks.UPSAMPLERS):
    for kind in kinds.values():
      assert ("t" in "".join(kind.axes)) == (kind.time_kernel > 1)
