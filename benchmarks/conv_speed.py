"""Wall time of each conv implementation (`ops.conv.IMPLEMENTATIONS`, bootvae_jax/ops/conv.py).

  python benchmarks/conv_speed.py [--repeats=5] [--frames=17] [--size=64]
  python benchmarks/conv_speed.py --parts=grads --grad_shapes=19x128x64x64 --repeats=2

Measures, for each formulation, the median wall time of
  * `model_forward`: jitted encode + decode (posterior mean) of a small ProMAG base,
  * `model_forward_backward`: jitted value and gradient of the L1 reconstruction loss w.r.t.
    every parameter of that model,
  * `layer_forward` / `layer_forward_backward`: one 3x3x3 causal conv 64 -> 64 alone (the
    gradient w.r.t. its input and kernel).
  * `layer_grads` (`--parts=grads`): for each `--grad_shapes` entry TxHxCinxCout (a 3x3x3
    `same` conv over (1, T, H, H, Cin), valid in time), d/dx and d/dkernel apart, each through a
    fixed cotangent, and both together: JAX's default implementation with its custom backward (whose
    d/dx is a Winograd conv where one applies, else the autodiff one), plain JAX autodiff of
    the same formulation (`ops.conv.conv3d_by_formulation`), and PyTorch's conv3d backward (its
    forward graph built once, outside the timing). Wall and CPU seconds (min over repeats).
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
from bootvae_jax.ops import conv as conv_ops  # pylint: disable=g-import-not-at-top

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (after compile).")
_FRAMES = flags.DEFINE_integer("frames", 17, "Clip length (1 + 4k).")
_SIZE = flags.DEFINE_integer("size", 64, "Frame height and width (a multiple of 8).")
_LAYER_CHANNELS = flags.DEFINE_integer("layer_channels", 64, "Channels of the single conv.")
_PARTS = flags.DEFINE_list("parts", ["model", "layer"], "Any of model, layer, grads.")
_GRAD_SHAPES = flags.DEFINE_list(
    "grad_shapes",
    ["19x128x64x64", "19x64x128x128", "7x16x256x256", "11x32x256x256"],
    "TxHxCinxCout of the convs whose gradients --parts=grads times (ProMAG base at 17x128²;"
    " winograd_forward in the output says which run Winograd).",
)

IMPLS = conv_ops.IMPLEMENTATIONS
MODEL_KWARGS = dict(
    base_channels=16, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1, num_groups=8
)


def _timed_calls(fn, *args, repeats: int) -> tuple[float, list[float], list[float], object]:
  """(compile + first call seconds, wall seconds and CPU seconds of each later call, last
  output); `fn` may return JAX arrays or torch tensors."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return compile_s, walls, cpus, out


def _min_wall_and_cpu(fn, *args, repeats: int) -> tuple[float, float]:
  """(min wall, min CPU seconds) of `repeats` calls after the first (compile) call."""
  _, walls, cpus, _ = _timed_calls(fn, *args, repeats=repeats)
  return round(min(walls), 4), round(min(cpus), 4)


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
  model = autoencoder.VideoAutoencoder(architectures.promag_base(**MODEL_KWARGS), rngs=nnx.Rngs(0))
  num_params = autoencoder.count_params(model)
  graphdef, params = nnx.split(model)  # same parameters for every implementation
  forward, backward = {}, {}
  for impl in IMPLS:

    def reconstruct(params, x, graphdef=graphdef):
      model = nnx.merge(graphdef, params)
      return model.decode(model.encode(x).mean)

    def loss(params, x, reconstruct=reconstruct):
      return jnp.mean(jnp.abs(reconstruct(params, x) - x))

    with conv_ops.forced_implementation(impl):  # new functions: traced with `impl`
      c, t, _, out = _timed_calls(jax.jit(reconstruct), params, x, repeats=_REPEATS.value)
      forward[impl] = dict(compile_s=c, times=t, out=out)
      c, t, _, (value, _) = _timed_calls(
          jax.jit(jax.value_and_grad(loss)), params, x, repeats=_REPEATS.value
      )
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
  conv = layers.Conv3d(c, c, (3, 3, 3), time_padding="causal", rngs=nnx.Rngs(0))
  kernel, bias = conv.kernel[...], conv.bias[...]
  for impl in IMPLS:  # same parameters; only the implementation differs

    def apply(kernel, x, conv=conv, bias=bias):
      return conv.apply(x, kernel, bias)

    def loss(kernel, x, apply=apply):
      return jnp.mean(jnp.abs(apply(kernel, x)))

    with conv_ops.forced_implementation(impl):  # new functions: traced with `impl`
      fwd = jax.jit(apply)
      c_s, t, _, out = _timed_calls(fwd, kernel, x, repeats=_REPEATS.value)
      forward[impl] = dict(compile_s=c_s, times=t, out=out)
      grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
      c_s, t, _, (dkernel, _) = _timed_calls(grad, kernel, x, repeats=_REPEATS.value)
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


def _vjp(conv, argnums):
  """(x, kernel, cotangent) → the cotangents of conv's inputs `argnums` (one array if one)."""

  def grads(x, kernel, cotangent):
    both = jax.vjp(conv, x, kernel)[1](cotangent)
    return both[argnums[0]] if len(argnums) == 1 else both

  return grads


def bench_gradients() -> None:
  import torch  # pylint: disable=import-outside-toplevel

  impl = conv_ops.implementation()
  for spec in _GRAD_SHAPES.value:
    t, h, cin, cout = map(int, spec.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, t, h, h, cin)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, 3, cin, cout)) / np.sqrt(27 * cin)).astype(np.float32)
    cotangent = rng.standard_normal((1, t - 2, h, h, cout)).astype(np.float32)
    args = dict(stride=(1, 1, 1), spatial_padding=((1, 1), (1, 1)))
    custom = lambda x, k: conv_ops.conv3d(x, k, **args)
    autodiff = lambda x, k: conv_ops.conv3d_by_formulation(
        x, k, args["stride"], args["spatial_padding"], impl
    )
    jx, jk, jg = map(jnp.asarray, (x, kernel, cotangent))
    line = {"bench": "conv_speed", "what": "layer_grads", "input_shape": [1, t, h, h, cin]}
    line["kernel_shape"] = [3, 3, 3, cin, cout]
    line["conv_impl"] = impl
    line["winograd_forward"] = conv_ops.winograd_applies(
        x.shape, kernel.shape, (1, 1, 1), args["spatial_padding"]
    )
    outputs = {}
    wrt = {"dx": (0,), "dkernel": (1,), "both": (0, 1)}
    for name, conv in (("jax_custom", custom), ("jax_autodiff", autodiff)):
      for what, argnums in wrt.items():
        fn = jax.jit(_vjp(conv, argnums))
        line[f"{what}_{name}_s"], line[f"{what}_{name}_cpu_s"] = _min_wall_and_cpu(
            fn, jx, jk, jg, repeats=_REPEATS.value
        )
        if what == "dkernel":
          outputs[name] = np.asarray(fn(jx, jk, jg))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3))).requires_grad_()
    wt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))).requires_grad_()
    gt = torch.from_numpy(np.ascontiguousarray(cotangent.transpose(0, 4, 1, 2, 3)))
    yt = torch.nn.functional.conv3d(xt, wt, padding=(0, 1, 1))
    for what, inputs in (("dx", [xt]), ("dkernel", [wt]), ("both", [xt, wt])):
      grad = lambda inputs=inputs: torch.autograd.grad(yt, inputs, gt, retain_graph=True)
      line[f"{what}_torch_s"], line[f"{what}_torch_cpu_s"] = _min_wall_and_cpu(
          grad, repeats=_REPEATS.value
      )
    for what in ("dx", "dkernel", "both"):
      line[f"{what}_speedup_custom_over_autodiff"] = round(
          line[f"{what}_jax_autodiff_s"] / line[f"{what}_jax_custom_s"], 3
      )
      line[f"{what}_ratio_custom_over_torch"] = round(
          line[f"{what}_jax_custom_s"] / line[f"{what}_torch_s"], 3
      )
    reference = outputs["jax_autodiff"]
    line["dkernel_max_rel_diff"] = float(
        np.max(np.abs(outputs["jax_custom"] - reference)) / np.max(np.abs(reference))
    )
    line.update(
        repeats=_REPEATS.value,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        load_avg_1m=round(os.getloadavg()[0], 2),
    )
    print(json.dumps(line), flush=True)


def main(argv):
  del argv
  if "model" in _PARTS.value:
    bench_model()
  if "layer" in _PARTS.value:
    bench_layer()
  if "grads" in _PARTS.value:
    bench_gradients()


if __name__ == "__main__":
  app.run(main)
