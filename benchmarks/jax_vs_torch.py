"""The same net with the same weights in JAX and in its PyTorch export, side by side.

  nice -n 10 python benchmarks/jax_vs_torch.py [--models=odvae,promag_base] \
      [--ops=encode,decode,train_step] [--frames=17] [--size=128] [--threads=2] [--repeats=3]
      [--breakdown [--backward]]

For each model and op, one JSON line with the median wall time of JAX (jitted; compile time
apart as `jax_compile_s`) and of PyTorch (`interop/torch_model.py`, eager, float32; its first
call apart as `torch_first_s`), `ratio` = jax_s / torch_s (> 1: JAX is slower), the largest
output difference between the two, the load average (the machine may be shared) and the
process's peak resident memory (`--frameworks=jax` or `torch` alone to read one framework's).

  * encode: x (B, T, H, W, 3) → posterior mean and logvar;
  * decode: the posterior mean → video;
  * train_step: L1(decode(mean + std·ε), x) + 1e-6·KL, gradient and one AdamW update
    (lr 1e-4, weight decay 0.01) of every parameter; ε fixed and shared by both frameworks;
  * loss, loss_and_grad (not by default): that loss alone (PyTorch recording its graph, as in
    training), and with its gradient but no update: where a train step's time goes.

Models: `odvae` is the released OD-VAE layout (architectures.odvae_variant(4), 239M
parameters), `promag_base` our ProMAG stage-I base (architectures.promag_base()). Weights are
random (drawn once, exported with `interop/exported.torch_state_dict`).

Threads are pinned equal: the process is bound to `--threads` CPUs (XLA sizes its intra-op pool
from the schedulable CPUs; `--xla_cpu_multi_thread_eigen=false` when 1) and
`torch.set_num_threads(--threads)`; both are set before either framework starts.
"""

import contextlib
import copy
import functools
import json
import os
import pathlib
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

_MODELS = flags.DEFINE_list("models", ["odvae", "promag_base"], "odvae and/or promag_base.")
_OPS = flags.DEFINE_list("ops", ["encode", "decode", "train_step"], "Ops to time.")
_FRAMES = flags.DEFINE_integer("frames", 17, "Clip length (1 + 4k).")
_SIZE = flags.DEFINE_integer("size", 128, "Frame height and width.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_THREADS = flags.DEFINE_integer("threads", 2, "CPU threads for each framework.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (after warm-up).")
_CONV_IMPL = flags.DEFINE_string(
    "conv_impl",
    "auto",
    "JAX conv implementation: auto (the backend's) or one of ops.conv.IMPLEMENTATIONS.",
)
_BASE_CHANNELS = flags.DEFINE_integer(
    "base_channels", 0, "Override the model width (0: the published one)."
)
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch"], "Which sides to run.")
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown",
    False,
    "Instead of whole ops: time every distinct layer of encode + decode (conv, norm, attention,"
    " resampler; the input shape it gets inside the model) alone in both frameworks; one line"
    " per layer kind and shape, with its number of calls and total time.",
)
_BACKWARD = flags.DEFINE_bool(
    "backward",
    False,
    "With --breakdown: time each layer's forward + backward (the gradient of <layer(x), g> with"
    " respect to x and the layer's parameters) instead of its forward alone.",
)

KL_WEIGHT = 1e-6


def pin_threads(threads: int) -> list[int]:
  """Binds this process to `threads` CPUs; must run before jax / torch start their pools."""
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)
  if threads == 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    ).strip()
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(threads)
  return cpus


def model_config(name: str):
  from bootvae_jax.models import architectures  # pylint: disable=import-outside-toplevel

  if name == "odvae":
    config = architectures.odvae_variant(4)
  elif name == "promag_base":
    config = architectures.promag_base()
  else:
    raise ValueError(f"--models: unknown model {name!r}; use odvae or promag_base")
  if _BASE_CHANNELS.value:
    config.base_channels = _BASE_CHANNELS.value
  return config


def random_model(config, seed: int = 0):
  """Parameters drawn by numpy (uniform ±1/sqrt(fan_in) kernels, perturbed norms)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from bootvae_jax.models import build_model  # pylint: disable=import-outside-toplevel

  model = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape, leaf = variable.get_value().shape, path[-1]
    if leaf == "kernel":
      bound = float(np.prod(shape[:-1])) ** -0.5
      value = rng.uniform(-bound, bound, shape).astype(np.float32)
    elif leaf == "scale":
      value = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      value = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    variable.set_value(jnp.asarray(value))
  return model


def clip_and_noise(config) -> tuple[np.ndarray, np.ndarray]:
  """(x, ε): a random clip of the flags' shape and the posterior noise of its latent."""
  from bootvae_jax import models  # pylint: disable=import-outside-toplevel

  r, s = models.compression_factors(config)
  shape = (_BATCH.value, _FRAMES.value, _SIZE.value, _SIZE.value, 3)
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, shape).astype(np.float32)
  latent_shape = (
      shape[0],
      1 + (shape[1] - 1) // r,
      shape[2] // s,
      shape[3] // s,
      config.latent_channels,
  )
  return x, rng.standard_normal(latent_shape).astype(np.float32)


def torch_copy(model, config):
  """The PyTorch mirror of `model` with its weights (what an export + load_exported gives)."""
  import torch  # pylint: disable=import-outside-toplevel

  from bootvae_jax.interop import exported  # pylint: disable=import-outside-toplevel
  from bootvae_jax.interop import torch_model  # pylint: disable=import-outside-toplevel

  vae = torch_model.VideoAutoencoder(config.to_dict())
  vae.load_state_dict({k: torch.from_numpy(v) for k, v in exported.torch_state_dict(model).items()})
  return vae.eval()


def _clock(fn) -> tuple[float, float, object]:
  """(wall seconds, CPU seconds of this process, output) of one call. With one thread the CPU
  time is the robust measure on a shared machine (waiting for a core does not count)."""
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - wall, time.process_time() - cpu, out


def _timed(fn, repeats: int) -> tuple[float, list[float], list[float]]:
  """(first call's wall seconds, later calls' wall seconds, later calls' CPU seconds)."""
  first, _, _ = _clock(fn)
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu, _ = _clock(fn)
    walls.append(wall)
    cpus.append(cpu)
  return first, walls, cpus


def jax_ops(model, x, eps):
  """{op: a no-argument call returning numpy} for the jitted JAX model."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  graphdef, params = nnx.split(model)
  x, eps = jnp.asarray(x), jnp.asarray(eps)

  @jax.jit
  def encode(params, x):
    posterior = nnx.merge(graphdef, params).encode(x)
    return posterior.mean, posterior.logvar

  @jax.jit
  def decode(params, z):
    return nnx.merge(graphdef, params).decode(z)

  tx = optax.adamw(1e-4, weight_decay=0.01)

  def loss_fn(params, x, eps):
    m = nnx.merge(graphdef, params)
    posterior = m.encode(x)
    recon = m.decode(posterior.mean + posterior.std * eps)
    return jnp.mean(jnp.abs(recon - x)) + KL_WEIGHT * jnp.mean(posterior.kl())

  loss_jit = jax.jit(loss_fn)
  loss_and_grad_jit = jax.jit(jax.value_and_grad(loss_fn))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, x, eps):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, eps)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {}

  def encode_op():
    state["mean"] = encode(params, x)[0]
    return np.asarray(state["mean"])

  def decode_op():
    if "mean" not in state:
      state["mean"] = encode(params, x)[0]
    return np.asarray(decode(params, state["mean"]))

  def step():
    if "params" not in state:  # a copy: the step updates it, the other ops keep the originals
      state["params"] = jax.tree.map(jnp.array, params)
      state["opt"] = tx.init(state["params"])
    state["params"], state["opt"], loss = train_step(state["params"], state["opt"], x, eps)
    return np.asarray(loss)

  return {
      "encode": encode_op,
      "decode": decode_op,
      "train_step": step,
      "loss": lambda: np.asarray(loss_jit(params, x, eps)),
      "loss_and_grad": lambda: np.asarray(
          jax.block_until_ready(loss_and_grad_jit(params, x, eps))[0]
      ),
  }


def torch_ops(vae, x, eps):
  """{op: a no-argument call returning numpy (B, T, H, W, C)} for the PyTorch mirror."""
  import torch  # pylint: disable=import-outside-toplevel

  to_t = lambda a: torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 4, 1, 2, 3))))
  to_j = lambda t: np.transpose(t.detach().numpy(), (0, 2, 3, 4, 1))
  x, eps = to_t(x), to_t(eps)
  state = {}

  def encode():
    with torch.inference_mode():
      state["mean"] = vae.encode(x)[0]
      return to_j(state["mean"])

  def decode():
    with torch.inference_mode():
      if "mean" not in state:
        state["mean"] = vae.encode(x)[0]
      return to_j(vae.decode(state["mean"]))

  def loss_of(module):
    mean, logvar = module.encode(x)
    recon = module.decode(mean + torch.exp(0.5 * logvar) * eps)
    kl = 0.5 * torch.sum(mean.square() + logvar.exp() - 1.0 - logvar, dim=(1, 2, 3, 4))
    return torch.mean(torch.abs(recon - x)) + KL_WEIGHT * kl.mean()

  def step():
    if "trained" not in state:  # a copy, as on the JAX side: encode / decode keep the originals
      state["trained"] = copy.deepcopy(vae)
      state["optimizer"] = torch.optim.AdamW(
          state["trained"].parameters(), lr=1e-4, weight_decay=0.01
      )
    trained, optimizer = state["trained"], state["optimizer"]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(trained)
    loss.backward()
    optimizer.step()
    return loss.detach().numpy()

  def loss_and_grad():
    vae.zero_grad(set_to_none=True)
    loss = loss_of(vae)
    loss.backward()
    return loss.detach().numpy()

  return {
      "encode": encode,
      "decode": decode,
      "train_step": step,
      "loss": lambda: loss_of(vae).detach().numpy(),
      "loss_and_grad": loss_and_grad,
  }


def compare(ops: dict, op: str, repeats: int) -> dict:
  """Warm-up calls (JAX compiles), then `repeats` rounds alternating the frameworks, so both
  see the same load on a shared machine. The first outputs are compared."""
  firsts, outs = {}, {}
  walls, cpus = {fw: [] for fw in ops}, {fw: [] for fw in ops}
  for fw, fns in ops.items():
    firsts[fw], _, outs[fw] = _clock(fns[op])
  for _ in range(repeats):
    for fw, fns in ops.items():
      wall, cpu, _ = _clock(fns[op])
      walls[fw].append(wall)
      cpus[fw].append(cpu)
  line = {}
  for fw, label in (("jax", "compile"), ("torch", "first")):
    if fw in ops:
      line[f"{fw}_s"] = round(statistics.median(walls[fw]), 4)
      line[f"{fw}_cpu_s"] = round(statistics.median(cpus[fw]), 4)
      line[f"{fw}_all_s"] = [round(t, 3) for t in walls[fw]]
      line[f"{fw}_{label}_s"] = round(firsts[fw], 2)
  if len(ops) == 2:
    line["ratio"] = round(line["jax_s"] / line["torch_s"], 3)
    line["ratio_cpu"] = round(line["jax_cpu_s"] / line["torch_cpu_s"], 3)
    line["max_abs_diff"] = float(np.max(np.abs(outs["jax"] - outs["torch"])))
  return line


def _layer_gradients(graphdef, j_in, t_module, xin):
  """(JAX state ↦ gradients, PyTorch () ↦ gradients) of <layer(x), g> w.r.t. x and the layer's
  parameters, g a fixed random cotangent of the output's shape."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  t_in = torch.from_numpy(xin).requires_grad_()
  with torch.no_grad():
    t_g = torch.randn_like(t_module(t_in))

  def t_fn():
    t_module.zero_grad(set_to_none=True)
    t_in.grad = None
    t_module(t_in).backward(t_g)
    return t_in.grad

  g = jax.numpy.asarray(np.ascontiguousarray(t_g.numpy().transpose(0, 2, 3, 4, 1)))
  inner = lambda state, x: jax.numpy.vdot(nnx.merge(graphdef, state)(x), g)
  gradients = jax.jit(jax.grad(inner, argnums=(0, 1)))
  return lambda state: gradients(state, j_in), t_fn


def breakdown(name, config, model, vae, x, repeats):
  """Per-layer JAX vs PyTorch times at the shapes each layer sees inside encode + decode."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from bootvae_jax.interop import torch_model  # pylint: disable=import-outside-toplevel

  kinds = (
      torch_model.Conv3d,
      torch_model.Norm,
      torch_model.SpatialAttention,
      torch_model.SpatioTemporalAttention,
      torch_model.NearestUpsample,
      torch_model.TrilinearUpsample,
      torch_model.DepthToSpaceUpsample,
  )
  calls = {}  # (kind signature, input shape) -> [module name, count]

  def signature(module):
    if isinstance(module, torch_model.Conv3d):
      return (
          f"Conv3d{module.kernel_size} {module.weight.shape[1]}->{module.weight.shape[0]}"
          f" stride{module.stride} {module.time_padding}"
      )
    if isinstance(module, torch_model.Norm):
      return f"Norm {module.kind}"
    return type(module).__name__

  def hook(name):
    def record(module, args):
      key = (signature(module), tuple(args[0].shape))
      calls.setdefault(key, [name, 0])[1] += 1

    return record

  handles = [
      m.register_forward_pre_hook(hook(n)) for n, m in vae.named_modules() if isinstance(m, kinds)
  ]
  xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 4, 1, 2, 3))))
  with torch.inference_mode():
    vae.decode(vae.encode(xt)[0])
  for h in handles:
    h.remove()

  def module_at(root, dotted):
    for part in dotted.split("."):
      root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root

  totals = {"jax": 0.0, "torch": 0.0}
  for (sig, shape), (module_name, count) in sorted(calls.items(), key=lambda kv: kv[0]):
    rng = np.random.default_rng(0)
    xin = rng.standard_normal(shape).astype(np.float32)
    t_module = module_at(vae, module_name)
    graphdef, state = nnx.split(module_at(model, module_name))
    j_in = jax.numpy.asarray(np.ascontiguousarray(np.transpose(xin, (0, 2, 3, 4, 1))))
    if _BACKWARD.value:
      j_fn, t_fn = _layer_gradients(graphdef, j_in, t_module, xin)
    else:
      forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
      j_fn = lambda state: forward(state, j_in)
      t_fn = torch.inference_mode()(functools.partial(t_module, torch.from_numpy(xin)))
    _, t_walls, t_cpus = _timed(t_fn, repeats)
    _, j_walls, j_cpus = _timed(lambda: jax.block_until_ready(j_fn(state)), repeats)
    line = {
        "bench": "jax_vs_torch_layers",
        "model": name,
        "pass": "forward+backward" if _BACKWARD.value else "forward",
        "layer": sig,
        "example": module_name,
        "input_shape_ncthw": list(shape),
        "calls": count,
    }
    for fw, walls, cpus in (("jax", j_walls, j_cpus), ("torch", t_walls, t_cpus)):
      line[f"{fw}_s"], line[f"{fw}_cpu_s"] = min(walls), min(cpus)
      totals[fw] += count * min(cpus)
      line[f"{fw}_total_cpu_s"] = round(count * min(cpus), 4)
    line["ratio"] = round(line["jax_s"] / line["torch_s"], 3)
    line["ratio_cpu"] = round(line["jax_cpu_s"] / line["torch_cpu_s"], 3)
    line["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(line), flush=True)
  print(
      json.dumps(
          {
              "bench": "jax_vs_torch_layers",
              "model": name,
              "layer": "sum of the above",
              "jax_total_cpu_s": round(totals["jax"], 3),
              "torch_total_cpu_s": round(totals["torch"], 3),
              "ratio_cpu": round(totals["jax"] / totals["torch"], 3),
          }
      ),
      flush=True,
  )


def main(argv):
  del argv
  cpus = pin_threads(_THREADS.value)
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(_THREADS.value)
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from bootvae_jax.ops import conv as conv_ops  # pylint: disable=import-outside-toplevel

  forced = (
      contextlib.nullcontext()
      if _CONV_IMPL.value == "auto"
      else conv_ops.forced_implementation(_CONV_IMPL.value)
  )
  with forced:  # every conv traced below runs this implementation
    for name in _MODELS.value:
      config = model_config(name)
      x, eps = clip_and_noise(config)
      shape = x.shape
      model = random_model(config)
      num_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
      if _BREAKDOWN.value:
        breakdown(name, config, model, torch_copy(model, config), x, _REPEATS.value)
        continue
      ops = {}
      if "jax" in _FRAMEWORKS.value:
        ops["jax"] = jax_ops(model, x, eps)
      if "torch" in _FRAMEWORKS.value:
        ops["torch"] = torch_ops(torch_copy(model, config), x, eps)
      for op in _OPS.value:
        line = {
            "bench": "jax_vs_torch",
            "model": name,
            "op": op,
            "input_shape": list(shape),
            "num_params": num_params,
        }
        line.update(compare(ops, op, _REPEATS.value))
        line.update(
            threads=_THREADS.value,
            cpus=cpus,
            torch_threads=torch.get_num_threads(),
            conv_impl=conv_ops.implementation(),
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            repeats=_REPEATS.value,
            jax=jax.__version__,
            torch=torch.__version__,
            load_avg_1m=round(os.getloadavg()[0], 2),
            # Of the whole process so far: run one framework per process to read one alone.
            peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        )
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
  app.run(main)
