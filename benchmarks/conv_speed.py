"""Wall time of each conv formulation (`conv_impl` in `layers.CONV_IMPLS`, models/layers.py).

  python benchmarks/conv_speed.py [--repeats=5] [--frames=17] [--size=64]

Measures, for each formulation, the median wall time of
  * `model_forward`: jitted encode + decode (posterior mean) of a small ProMAG base,
  * `model_forward_backward`: jitted value and gradient of the L1 reconstruction loss w.r.t.
    every parameter of that model,
  * `layer_forward` / `layer_forward_backward`: one 3x3x3 causal conv 64 -> 64 alone (the
    gradient w.r.t. its input and kernel).
Compile time is excluded (reported apart as compile_s); every call ends in
`block_until_ready`. All formulations run with the same parameters, and the largest
difference between each output and "xla"'s is reported. One JSON line per measurement.
"""

import json
import os
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from bootvae_jax.models import architectures  # pylint: disable=g-import-not-at-top
from bootvae_jax.models import autoencoder  # pylint: disable=g-import-not-at-top
from bootvae_jax.models import layers  # pylint: disable=g-import-not-at-top

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (after compile).")
_FRAMES = flags.DEFINE_integer("frames", 17, "Clip length (1 + 4k).")
_SIZE = flags.DEFINE_integer("size", 64, "Frame height and width (a multiple of 8).")
_LAYER_CHANNELS = flags.DEFINE_integer("layer_channels", 64, "Channels of the single conv.")
_SKIP_LAYER = flags.DEFINE_bool("skip_layer", False, "Only measure the model.")

IMPLS = layers.CONV_IMPLS
MODEL_KWARGS = dict(
    base_channels=16, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, num_groups=8
)


def _time(fn, *args, repeats: int) -> tuple[float, list[float], object]:
  """(compile + first call seconds, timed seconds per later call, last output)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, times, out


def _report(what: str, shape, results: dict, extra: dict) -> None:
  line = {"bench": "conv_speed", "what": what, "input_shape": list(shape)}
  line.update(extra)
  for impl in IMPLS:
    line[f"{impl}_median_s"] = round(statistics.median(results[impl]["times"]), 5)
  line["compile_s"] = {impl: round(results[impl]["compile_s"], 2) for impl in IMPLS}
  reference = np.asarray(results["xla"]["out"], np.float32)
  for impl in IMPLS[1:]:
    line[f"speedup_{impl}_over_xla"] = round(line["xla_median_s"] / line[f"{impl}_median_s"], 3)
    out = np.asarray(results[impl]["out"], np.float32)
    line[f"max_abs_diff_{impl}"] = float(np.max(np.abs(reference - out)))
  line.update(
      repeats=_REPEATS.value,
      backend=jax.default_backend(),
      device=str(jax.devices()[0].device_kind),
      cpu_count=os.cpu_count(),
      load_avg_1m=round(os.getloadavg()[0], 2),
  )
  print(json.dumps(line), flush=True)


def bench_model() -> None:
  shape = (1, _FRAMES.value, _SIZE.value, _SIZE.value, 3)
  x = jax.random.uniform(jax.random.key(0), shape, jnp.float32, -1.0, 1.0)
  models = {}
  for impl in IMPLS:
    config = architectures.promag_base(**MODEL_KWARGS)
    config.conv_impl = impl
    if not models:
      models[impl] = autoencoder.VideoAutoencoder(config, rngs=nnx.Rngs(0))
    else:  # same parameters, other formulation
      abstract = nnx.eval_shape(lambda c=config: autoencoder.VideoAutoencoder(c, rngs=nnx.Rngs(0)))
      graphdef, _ = nnx.split(abstract)
      models[impl] = nnx.merge(graphdef, nnx.state(next(iter(models.values()))))
  num_params = autoencoder.count_params(models["xla"])
  forward, backward = {}, {}
  for impl, model in models.items():
    graphdef, params = nnx.split(model)

    def reconstruct(params, x, graphdef=graphdef):
      model = nnx.merge(graphdef, params)
      return model.decode(model.encode(x).mean)

    def loss(params, x, reconstruct=reconstruct):
      return jnp.mean(jnp.abs(reconstruct(params, x) - x))

    c, t, out = _time(jax.jit(reconstruct), params, x, repeats=_REPEATS.value)
    forward[impl] = dict(compile_s=c, times=t, out=out)
    c, t, (value, _) = _time(jax.jit(jax.value_and_grad(loss)), params, x, repeats=_REPEATS.value)
    backward[impl] = dict(compile_s=c, times=t, out=value)
  extra = {
      "model": "promag_base(" + ", ".join(f"{k}={v}" for k, v in MODEL_KWARGS.items()) + ")",
      "num_params": num_params,
  }
  _report("model_forward", shape, forward, dict(extra, compared="reconstruction"))
  _report(
      "model_forward_backward",
      shape,
      backward,
      dict(extra, grad="L1 recon loss, d/dparams", compared="loss"),
  )


def bench_layer() -> None:
  c = _LAYER_CHANNELS.value
  shape = (1, _FRAMES.value, _SIZE.value, _SIZE.value, c)
  x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
  forward, backward = {}, {}
  for impl in IMPLS:
    # Same seed, same parameters; only the formulation differs.
    conv = layers.Conv3d(c, c, (3, 3, 3), time_padding="causal", conv_impl=impl, rngs=nnx.Rngs(0))
    kernel, bias = conv.kernel[...], conv.bias[...]

    def apply(kernel, x, conv=conv, bias=bias):
      return conv.apply(x, kernel, bias)

    def loss(kernel, x, apply=apply):
      return jnp.mean(jnp.abs(apply(kernel, x)))

    fwd = jax.jit(apply)
    c_s, t, out = _time(fwd, kernel, x, repeats=_REPEATS.value)
    forward[impl] = dict(compile_s=c_s, times=t, out=out)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    c_s, t, (dkernel, _) = _time(grad, kernel, x, repeats=_REPEATS.value)
    backward[impl] = dict(compile_s=c_s, times=t, out=dkernel)
  flops = 2 * _FRAMES.value * _SIZE.value**2 * 27 * c * c
  extra = {
      "layer": f"Conv3d({c}, {c}, (3, 3, 3), time_padding='causal')",
      "forward_gflop": round(flops / 1e9, 2),
  }
  _report("layer_forward", shape, forward, dict(extra, compared="output"))
  _report(
      "layer_forward_backward",
      shape,
      backward,
      dict(extra, grad="mean |y|, d/dkernel and d/dx", compared="d/dkernel"),
  )


def main(argv):
  del argv
  bench_model()
  if not _SKIP_LAYER.value:
    bench_layer()


if __name__ == "__main__":
  app.run(main)
