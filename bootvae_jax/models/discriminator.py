"""3D patch discriminator for adversarial training of the video autoencoder.

The N-layer PatchGAN of pix2pix / taming, inflated to 3D as in TATS and the CV-VAE /
Open-Sora-Plan `NLayerDiscriminator3D`: 4x4x4 convolutions with padding 2; the first
`num_layers` convolutions halve time, height and width; then one stride-1 conv and a
stride-1 conv to one logit per patch. LeakyReLU(0.2) throughout.

Unlike the released code we normalise with GroupNorm instead of BatchNorm: no running
statistics to carry in the train state, no cross-device batch-stat sync, and the logits
of one clip do not depend on the rest of the batch. Statistics are over the whole clip
(T, H, W) per group, the 3D analogue of what BatchNorm3d pooled.

Sizes: each stride-2 layer maps n -> floor(n / 2) + 1, each stride-1 layer n -> n + 1,
so any input with T, H, W >= 1 gives a non-empty output (9x32x32 with 3 layers -> 4x7x7).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bootvae_jax.models import layers

_KERNEL_SIZE = 4
_PADDING = 2  # ceil((4 - 1) / 2), as in TATS / CV-VAE
_MAX_CHANNEL_MULT = 8


class _ConvNormAct(nnx.Module):
  """4x4x4 conv, optional GroupNorm, optional LeakyReLU(0.2). (B, T, H, W, C) in and out."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      *,
      stride: int,
      use_norm: bool,
      use_act: bool,
      num_groups: int,
      dtype: Any,
      param_dtype: Any,
      in_axis: str | None = 'conv_in',
      out_axis: str | None = 'conv_out',
      rngs: nnx.Rngs,
  ):
    # Logical names of the kernel's channel axes (None: never sharded).
    kernel_axes = layers.CONV_KERNEL_AXES[:3] + (in_axis, out_axis)
    self.conv = nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(_KERNEL_SIZE,) * 3,
        strides=(stride,) * 3,
        padding=((_PADDING, _PADDING),) * 3,
        # A bias right before a norm is redundant (the norm removes it).
        use_bias=not use_norm,
        dtype=dtype,
        param_dtype=param_dtype,
        # taming's weights_init: N(0, 0.02) conv kernels.
        kernel_init=layers.logical(nnx.initializers.normal(0.02), kernel_axes),
        bias_init=layers.logical(nnx.initializers.zeros_init(), (out_axis,)),
        rngs=rngs,
    )
    if use_norm:
      self.norm = nnx.GroupNorm(
          out_channels,
          num_groups=math.gcd(num_groups, out_channels),
          epsilon=1e-5,
          dtype=dtype,
          param_dtype=param_dtype,
          scale_init=layers.logical(nnx.initializers.ones_init(), layers.CHANNEL_AXES),
          bias_init=layers.logical(nnx.initializers.zeros_init(), layers.CHANNEL_AXES),
          rngs=rngs,
      )
    else:
      self.norm = None
    self.use_act = use_act

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.norm is not None:
      x = self.norm(x)
    if self.use_act:
      x = nnx.leaky_relu(x, negative_slope=0.2)
    return x


class PatchDiscriminator3D(nnx.Module):
  """N-layer 3D PatchGAN discriminator.

  Channels: base, base*2, ..., base*min(2**num_layers, 8) (taming's multipliers), then 1.
  The first conv has no norm; the last conv has neither norm nor activation.

  Parameters carry logical axis names (metadata for `core/sharding.py`): conv
  kernels `(conv_t, conv_h, conv_w, conv_in, conv_out)`, conv biases and norm scale/bias
  `(conv_out,)`; the first kernel's RGB input axis and the logit conv's output axis are
  None. Only the first and last convs have biases (a bias before a norm is redundant).
  """

  def __init__(
      self,
      in_channels: int = 3,
      base_channels: int = 64,
      num_layers: int = 3,
      norm: str = 'group',
      *,
      num_groups: int = 32,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Builds the layers.

    Args:
      in_channels: channels of the input clips (3 for RGB).
      base_channels: width of the first conv (64 in taming, CV-VAE, Open-Sora-Plan).
      num_layers: number of stride-2 convs (3 in taming; CV-VAE's SD3 recipe uses 4).
      norm: 'group' (GroupNorm with gcd(num_groups, C) groups) or 'none'.
      num_groups: GroupNorm groups, reduced to a divisor of the width where needed.
      dtype: compute dtype (e.g. jnp.bfloat16); logits are returned in float32.
      param_dtype: parameter dtype.
      rngs: NNX rngs; `rngs.params` initialises the weights.
    """
    if norm not in ('group', 'none'):
      raise ValueError(
          f"norm must be 'group' or 'none', got {norm!r} (BatchNorm is not "
          'offered: its running statistics do not fit the functional train step)'
      )
    if num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {num_layers}')
    use_norm = norm == 'group'
    common = dict(num_groups=num_groups, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    widths = [base_channels * min(2**n, _MAX_CHANNEL_MULT) for n in range(num_layers + 1)]
    # The RGB input axis and the single logit axis are left unnamed (replicated): a 3- or
    # 1-wide axis cannot be split over a mesh axis by a 'conv_in'/'conv_out' rule.
    layers = [
        _ConvNormAct(
            in_channels, widths[0], stride=2, use_norm=False, use_act=True, in_axis=None, **common
        )
    ]
    for n in range(1, num_layers):
      layers.append(
          _ConvNormAct(
              widths[n - 1], widths[n], stride=2, use_norm=use_norm, use_act=True, **common
          )
      )
    layers.append(
        _ConvNormAct(
            widths[num_layers - 1],
            widths[num_layers],
            stride=1,
            use_norm=use_norm,
            use_act=True,
            **common,
        )
    )
    layers.append(
        _ConvNormAct(
            widths[num_layers], 1, stride=1, use_norm=False, use_act=False, out_axis=None, **common
        )
    )
    self.layers = nnx.List(layers)
    self.num_layers = num_layers

  def __call__(self, x: jax.Array) -> jax.Array:
    """Scores every space-time patch.

    Args:
      x: (B, T, H, W, C) clips in [-1, 1].

    Returns:
      (B, T', H', W', 1) float32 logits, T' = out(T) with n -> floor(n/2) + 1 applied
      `num_layers` times, then n -> n + 1 twice (same for H', W').
    """
    if x.ndim != 5:
      raise ValueError(f'PatchDiscriminator3D takes (B, T, H, W, C) clips; got {x.shape}')
    for layer in self.layers:
      x = layer(x)
    return x.astype(jnp.float32)


def output_size(n: int, num_layers: int) -> int:
  """Length of one output axis for an input axis of length n (see the module docstring)."""
  for _ in range(num_layers):
    n = n // 2 + 1
  return n + 2
