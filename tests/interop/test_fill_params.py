"""`official.fill_params`: the one weight fill every importer runs with its own key rule."""

import numpy as np
import pytest
from flax import nnx

from bootvae_jax import cli
from bootvae_jax.interop import official
from bootvae_jax.models import layers


class Tiny(nnx.Module):
  """A 3×3×3 conv, a 1×1×1 conv (fillable from a Linear) and a norm."""

  def __init__(self):
    rngs = nnx.Rngs(0)
    self.conv = layers.Conv3d(2, 4, (3, 3, 3), rngs=rngs)
    self.proj = layers.Conv3d(4, 4, (1, 1, 1), rngs=rngs)
    self.norm = layers.Norm(4, "groupnorm_frame", num_groups=2, rngs=rngs)


def _rule(path):
  """`conv.kernel` → "net.conv.weight" (or the wrapped "net.conv.conv.weight")."""
  parts = [str(p) for p in path]
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[parts[-1]]
  return [".".join(["net", *parts[:-1], leaf]), ".".join(["net", *parts[:-1], "conv", leaf])]


def _tensors():
  rng = np.random.default_rng(0)
  return {
      "net.conv.weight": rng.standard_normal((4, 2, 3, 3, 3)).astype(np.float32),
      "net.conv.conv.bias": rng.standard_normal(4).astype(np.float32),  # the wrapped form
      "net.proj.weight": rng.standard_normal((4, 4)).astype(np.float32),  # a Linear
      "net.proj.bias": rng.standard_normal(4).astype(np.float32),
      "net.norm.weight": rng.standard_normal(4).astype(np.float32),
      "net.norm.bias": rng.standard_normal(4).astype(np.float32),
  }


def test_fills_every_parameter_in_our_layouts():
  model = nnx.eval_shape(Tiny)
  tensors = _tensors()
  official.fill_params(model, tensors, _rule)
  np.testing.assert_array_equal(
      model.conv.kernel[...], np.transpose(tensors["net.conv.weight"], (2, 3, 4, 1, 0))
  )
  np.testing.assert_array_equal(model.conv.bias[...], tensors["net.conv.conv.bias"])
  np.testing.assert_array_equal(
      model.proj.kernel[...], tensors["net.proj.weight"].T.reshape(1, 1, 1, 4, 4)
  )
  np.testing.assert_array_equal(model.norm.scale[...], tensors["net.norm.weight"])


def test_one_error_lists_missing_unexpected_and_mismatched():
  tensors = _tensors()
  del tensors["net.norm.bias"]
  tensors["net.extra.weight"] = np.zeros(3, np.float32)
  tensors["net.proj.bias"] = np.zeros(5, np.float32)
  with pytest.raises(cli.UserError) as info:
    official.fill_params(nnx.eval_shape(Tiny), tensors, _rule, source="diffusers")
  assert str(info.value) == "\n".join(
      [
          "the diffusers checkpoint does not match the model built from its config:",
          "  missing keys (1): net.norm.bias or net.norm.conv.bias",
          "  unexpected keys (1): net.extra.weight",
          "  shape mismatches (1): net.proj.bias: diffusers (5,) -> (5,), model expects (4,)",
      ]
  )
