"""Initialising a 3D video model from a 2D image VAE: tail / centre / average inflation.

    params = inflate(image_vae, video_model_config, mode="tail")   # nnx.State of the video model
    model = build_model(video_model_config, rngs=...); nnx.update(model, params)

or, in training, `config.init_checkpoint.{path=<image VAE>, inflate="tail"}`.

Every parameter of the video model comes from the image VAE parameter at the same path (the
image VAE is a per-frame model config, `models/image_vae.py`, so the trees line up):

* a `[kt, kh, kw, in, out]` kernel from a `[1, kh, kw, in, out]` one: `tail` puts the 2D
  weights in the last temporal slice and zeros elsewhere (OD-VAE), `centre` in the middle
  slice, `average` divides them by kt in every slice;
* a `d2s` upsampler's conv (conv to ft·fs²·C channels, then depth-to-space / -time) from the
  image VAE's nearest-2x-then-3×3-conv: nearest upsampling followed by a 3×3 conv equals a 3×3
  conv to 4·C channels on the low-resolution grid followed by depth-to-space (the sub-pixel
  identity, exact with zero padding), and the ft time phases each get that kernel;
* a `nearest3d` upsampler's conv (to ft·C channels) gets the 2D kernel in every time phase;
* everything else (norms, 1×1 convs, biases, attention) is copied.

Which layouts then reproduce the image VAE before any training (tests/models/test_init.py,
≤ 1e-4 on a random clip): with `tail` inflation, a causal model whose norms are the image VAE's
per-frame GroupNorm, whose spatial resamplers are strided convs (encoder) and nearest / d2s
upsamplers (decoder) and whose attention is per frame:
  * with no temporal compression: frame by frame, `model(x)[:, t] == image_vae(x[:, t])`;
  * with temporal compression r (strided causal conv downsample, d2s / nearest time
    upsample): latent frame k is the image latent of frame r·k, and video frame t is the
    image decoding of latent frame ⌈t/r⌉ (the latent that stands for it).
The released OD-VAE variants do not reproduce it: their 3D blocks normalise over the whole
clip (`groupnorm_clip`), and their decoder upsamples with trilinear interpolation (bilinear in
space) where SD uses nearest; the ProMAG base's mean-free RMS norm is not GroupNorm either. For
them inflation is an initialisation, not an identity. `centre` is the exact mode for convs
with centred time padding (CV-VAE's decoder), where the middle slice is the current frame.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bootvae_jax.models import autoencoder
from bootvae_jax.models import blocks

INFLATION_MODES = ("tail", "centre", "average")


def inflate_kernel(kernel: np.ndarray, kt: int, mode: str) -> np.ndarray:
  """(1, kh, kw, in, out) → (kt, kh, kw, in, out) by `mode` (see module doc)."""
  if mode not in INFLATION_MODES:
    raise ValueError(f"inflation mode {mode!r}; use one of {INFLATION_MODES}")
  if kernel.shape[0] != 1:
    raise ValueError(f"only a 2D kernel (1, kh, kw, in, out) inflates; got {kernel.shape}")
  if mode == "average":
    return np.repeat(kernel / kt, kt, axis=0)
  out = np.zeros((kt,) + kernel.shape[1:], kernel.dtype)
  out[kt - 1 if mode == "tail" else kt // 2] = kernel[0]
  return out


def nearest_conv_as_depth_to_space(kernel: np.ndarray) -> np.ndarray:
  """A 3×3 conv after nearest 2x upsampling as a 3×3 conv before depth-to-space.

  kernel: (kt, 3, 3, C_in, C) → (kt, 3, 3, C_in, 4·C), output channels ordered (fy, fx, C)
  as `layers.depth_to_space` reads them. Output pixel (2y+fy, 2x+fx) reads upsampled row
  2y+fy+dy, i.e. low-resolution row y + ⌊(fy+dy)/2⌋, so tap dy of phase fy lands on tap
  ⌊(fy+dy)/2⌋ + 1 of the low-resolution kernel.
  """
  kt, kh, kw, cin, cout = kernel.shape
  if (kh, kw) != (3, 3):
    raise ValueError(f"expected a 3x3 kernel, got {kernel.shape}")
  out = np.zeros((kt, 3, 3, cin, 2, 2, cout), kernel.dtype)
  for fy in range(2):
    for fx in range(2):
      for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
          out[:, (fy + dy) // 2 + 1, (fx + dx) // 2 + 1, :, fy, fx] += kernel[:, dy + 1, dx + 1]
  return out.reshape(kt, 3, 3, cin, 4 * cout)


def _flat_params(image_params: Any) -> dict[str, np.ndarray]:
  """'/'-joined path → array from a module, an nnx.State or a mapping."""
  if isinstance(image_params, Mapping) and not isinstance(image_params, nnx.State):
    return {str(k): np.asarray(v) for k, v in image_params.items()}
  if isinstance(image_params, nnx.Module):
    image_params = nnx.state(image_params, nnx.Param)
  return {
      "/".join(str(p) for p in path): np.asarray(v[...]) for path, v in image_params.flat_state()
  }


def _upsample_spec(config: ml_collections.ConfigDict, path: str):
  parts = path.split("/")
  if parts[:2] != ["decoder", "up"] or parts[3:5] != ["upsample", "conv"]:
    return None
  return blocks.ResampleSpec.parse(
      config.decoder.upsample[int(parts[2])], blocks.UPSAMPLE_KINDS, "model.decoder.upsample"
  )


def _inflate_one(path: str, value: np.ndarray, shape: tuple[int, ...], spec, mode: str):
  """The video parameter at `path` of `shape` from the image parameter `value`, or None."""
  kernel = path.endswith("/kernel") and value.ndim == 5
  if spec is not None and spec.kind in ("d2s", "nearest3d"):
    if kernel and spec.kind == "d2s" and spec.space_factor == 2:
      value = nearest_conv_as_depth_to_space(value)
    elif not kernel and spec.kind == "d2s":
      value = np.tile(value, spec.space_factor**2)
    value = np.concatenate([value] * spec.time_factor, axis=-1)  # one copy per time phase
  if value.shape == shape:
    return value
  if kernel and len(shape) == 5 and value.shape[1:] == shape[1:]:
    return inflate_kernel(value, shape[0], mode)
  return None


def inflate(
    image_params: Any, video_model_config: ml_collections.ConfigDict, mode: str = "tail"
) -> nnx.State:
  """The parameters of `video_model_config`'s model inflated from an image VAE's.

  Args:
    image_params: the image VAE (`ImageVAE` / a per-frame `VideoAutoencoder`), its parameter
      `nnx.State`, or a mapping '/'-joined path → array (as `loading.load_params` gives).
    video_model_config: a base video model config (no ProMAG growth levels: inflate the base,
      then grow it, as `config.init_checkpoint.inflate` does) whose layout matches the image
      VAE: the same levels, widths, res blocks per level, mid block and latent channels.
    mode: "tail", "centre" or "average" (see module doc).

  Returns:
    An `nnx.State` with every parameter of the video model (`nnx.update(model, state)`).

  Raises:
    ValueError: naming every parameter the image VAE lacks or cannot be inflated into.
  """
  if mode not in INFLATION_MODES:
    raise ValueError(f"inflation mode {mode!r}; use one of {INFLATION_MODES}")
  growth = video_model_config.get("growth")
  if growth is not None and growth.levels:
    raise ValueError(
        "inflate the base model (model.growth.levels=0); a grown model's new"
        " levels have no image counterpart (config.init_checkpoint.inflate with"
        " progressive.STAGE_MAPPING does this in training)"
    )
  source = _flat_params(image_params)
  model = nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(video_model_config, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  missing, mismatched = [], []

  def fill(path, variable):
    key = "/".join(str(p) for p in path)
    if key not in source:
      missing.append(key)
      return variable
    value = _inflate_one(
        key, source[key], tuple(variable.shape), _upsample_spec(video_model_config, key), mode
    )
    if value is None:
      mismatched.append(f"{key}: image {source[key].shape}, video {tuple(variable.shape)}")
      return variable
    return variable.replace(jnp.asarray(value, variable.dtype))

  params = nnx.map_state(fill, params)
  if missing or mismatched:
    lines = [
        f"the image VAE does not match the layout of {video_model_config.name!r}"
        " (same levels, widths, res blocks per level and latent channels needed):"
    ]
    for title, items in (("no image parameter", missing), ("cannot inflate", mismatched)):
      if items:
        lines.append(
            f"  {title} ({len(items)}): "
            + ", ".join(items[:10])
            + (" ..." if len(items) > 10 else "")
        )
    raise ValueError("\n".join(lines))
  return params


def flat_params(state: nnx.State) -> dict[str, np.ndarray]:
  """'/'-joined path → numpy array (the form `training/checkpoints` transfers)."""
  return _flat_params(state)
