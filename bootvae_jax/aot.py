r"""Will it fit? Compiles a config for a TPU slice on this machine, with no TPU attached.

  python -m bootvae_jax.aot --config=bootvae_jax/configs/promag_4x.py --topology=v5e-16

libtpu's deviceless topologies (`jax.experimental.topologies`) give the devices of a slice;
the real TPU compiler then compiles, for those devices and the config's own mesh, shardings
and donation: the train step exactly as training jits it (GAN, LPIPS and compatibility terms
when the config enables them), the eval step, and inference encode / decode of one clip at
the config's size. Printed: per-chip HBM split into parameters, optimizer state, EMA, frozen
parameters, discriminator, loss networks, batch and XLA temporaries against the chip's
capacity; FLOPs and bytes per chip per step; the roofline step time max(FLOPs / peak,
bytes / HBM bandwidth) and the MFU it bounds (model FLOPs, without remat recomputation); the
collectives of the partitioned program by kind, and which cross slices (DCN) with
--num_slices > 1. The last line is one JSON object.

Without --topology the config's `target_topology` is used. Exit status: 0 fits; 2 a user
error (bad flag, config field, unknown topology); 3 (`EXIT_DOES_NOT_FIT`) the config does not
fit the slice's HBM, with one line naming the shortfall. libtpu must be installed
(requirements-test.txt); nothing runs on an accelerator (JAX_PLATFORMS=cpu is set here).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu present must not make JAX pick a TPU
# Deviceless compilation needs no TPU host; these quiet libtpu's start-up probes.
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# No chip is opened, so fit checks may run side by side (libtpu's lockfile would refuse it).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import flags
from ml_collections import config_flags

from bootvae_jax import cli
from bootvae_jax.cli import UserError
from bootvae_jax.core import tpu_specs

EXIT_DOES_NOT_FIT = 3
GIB = tpu_specs.GIB
STEPS = ("train", "eval", "inference")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


LEVERS_HINT = (
    "try model.dtype=bfloat16, model.remat=block, optimizer.microbatches=N (gradient"
    " accumulation), a larger mesh.fsdp, or a larger slice"
)


class DoesNotFit(Exception):
  """The config's peak per-chip HBM exceeds the chip's capacity (exit EXIT_DOES_NOT_FIT)."""


# ----------------------------------------------------------------------------- the devices


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The devices of `num_slices` slices of a libtpu topology (e.g. "v5e:4x4"), slice by slice."""
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - jax always has it
    raise UserError(f"jax.experimental.topologies is unavailable: {e}") from e
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs)
  except Exception as e:  # libtpu missing, or a topology it refuses
    raise UserError(
        f"cannot build TPU topology {topology!r} ({cli.one_line(e)}); the fit check needs"
        " libtpu (pip install -r requirements-test.txt)"
    ) from e
  devices = list(desc.devices)
  if num_slices > 1:  # slice-major order: the data axis spans slices, fsdp stays inside one
    devices.sort(key=lambda d: (getattr(d, "slice_index", 0), d.id))
  return devices


# ----------------------------------------------------------------------------- memory


def per_chip_bytes(tree) -> int:
  """Bytes one chip holds of a pytree of sharded `ShapeDtypeStruct`s (its largest shard)."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree.leaves(tree):
    if leaf is None:
      continue
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


@dataclasses.dataclass
class Memory:
  """Per-chip bytes of one compiled program. `parts` are the arguments by role (logical
  shard sizes); `padding` is what XLA's argument size adds on top (TPU tiled layouts), so
  sum(parts) + padding == XLA's argument bytes and `total` == XLA's own peak estimate."""

  parts: dict[str, int]
  padding: int
  temporaries: int
  outputs: int  # outputs not aliased to (donated) inputs
  code: int
  xla: dict[str, int] = dataclasses.field(default_factory=dict)  # memory_analysis() as is

  @property
  def arguments(self) -> int:
    return sum(self.parts.values()) + self.padding

  @property
  def total(self) -> int:
    return self.arguments + self.temporaries + self.outputs + self.code


def memory_of(compiled, parts: dict[str, int]) -> Memory:
  stats = compiled.memory_analysis()
  return Memory(
      parts=parts,
      padding=int(stats.argument_size_in_bytes) - sum(parts.values()),
      temporaries=int(stats.temp_size_in_bytes),
      outputs=int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes),
      code=int(stats.generated_code_size_in_bytes),
      xla={
          k: int(getattr(stats, k))
          for k in (
              "argument_size_in_bytes",
              "output_size_in_bytes",
              "alias_size_in_bytes",
              "temp_size_in_bytes",
              "generated_code_size_in_bytes",
          )
      },
  )


# ----------------------------------------------------------------------------- collectives

_SHAPE = re.compile(r"\b(pred|[sfu]\d+|bf16|f8e\w+|c\d+)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def _shape_bytes(text: str) -> list[int]:
  out = []
  for dtype, dims in _SHAPE.findall(text):
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype.split("e")[0]) or 8)
    if dtype.startswith("c"):
      bits = int(dtype[1:])
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    out.append(n * bits // 8)
  return out


def _iota_groups(text: str) -> list[list[int]] | None:
  """Replica groups in iota form "[G,S]<=[d0,d1,...]T(p...)" → explicit lists."""
  import numpy as np

  m = re.match(r"\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
  if not m:
    return None
  groups, size = int(m.group(1)), int(m.group(2))
  dims = [int(d) for d in m.group(3).split(",")]
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  if m.group(4):
    ids = ids.transpose([int(p) for p in m.group(4).split(",")])
  return ids.reshape(groups, size).tolist()


def _mesh_groups(text: str) -> list[list[int]] | None:
  """Replica groups in mesh form "mesh['a'=2,'b'=4] {'b'}" → explicit lists (the devices that
  vary along the listed axes, the others fixed)."""
  import numpy as np

  m = re.match(r"mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
  if not m:
    return None
  axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
  if not axes:
    return None
  names = [a for a, _ in axes]
  sizes = [int(s) for _, s in axes]
  over = re.findall(r"'(\w+)'", m.group(2))
  if any(a not in names for a in over):
    return None
  ids = np.arange(int(np.prod(sizes))).reshape(sizes)
  keep = [i for i, a in enumerate(names) if a not in over]
  moved = ids.transpose(keep + [names.index(a) for a in over])
  group = int(np.prod([sizes[names.index(a)] for a in over])) if over else 1
  return moved.reshape(-1, group).tolist()


def _replica_groups(line: str) -> list[list[int]] | None:
  m = re.search(
      r"replica_groups=(\{\{[\d,{}\s]*\}\}|\{\}|\[[^ ]*|mesh\[[^\]]*\]\s*\{[^}]*\})", line
  )
  if m is None:
    m = re.search(r"source_target_pairs=(\{\{[\d,{}\s]*\}\})", line)
  if m is None:
    return None
  text = m.group(1)
  if text.startswith("{{"):
    return [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", text[1:-1])]
  if text == "{}":
    return []  # all devices in one group
  return _iota_groups(text) or _mesh_groups(text)


_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="(\w+)"')


def collectives(hlo_text: str, device_slices: list[int] | None = None) -> dict[str, dict]:
  """Collectives of a partitioned HLO module by kind: count, bytes (per chip, per execution of
  their computation: ops inside a loop body are counted once) and, given each device's slice
  index, the count and bytes of those whose groups span more than one slice (DCN)."""
  out = {k: {"count": 0, "bytes": 0, "dcn_count": 0, "dcn_bytes": 0} for k in COLLECTIVES}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z\-]+)\(", line)
    if not m:
      continue
    shape, op = m.groups()
    if op == "send" and (megascale := _MEGASCALE.search(line)):
      # Multislice: the compiler lowers the cross-slice part of a collective to host
      # transfers of the megascale runtime (a send and a recv each; the send is counted).
      kind = megascale.group(1).lower().replace("_", "-")
      if kind in COLLECTIVES:
        nbytes = sum(_shape_bytes(shape.split(", u32[]")[0]))
        for key, value in (("count", 1), ("bytes", nbytes)):
          out[kind][key] += value
          out[kind][f"dcn_{key}"] += value
      continue
    kind = op[: -len("-start")] if op.endswith("-start") else op
    if kind not in COLLECTIVES:
      continue
    sizes = _shape_bytes(shape)
    if op.endswith("-start") and kind in ("all-gather", "collective-permute"):
      # ((operands...), (results...), [context]): the results are the second half.
      sizes = [s for s in sizes if s > 4]
      sizes = sizes[len(sizes) // 2 :]
    nbytes = sum(sizes)
    entry = out[kind]
    entry["count"] += 1
    entry["bytes"] += nbytes
    if device_slices is not None and len(set(device_slices)) > 1:
      groups = _replica_groups(line)
      if groups == []:
        groups = [list(range(len(device_slices)))]
      if groups and any(
          len({device_slices[i] for i in g if i < len(device_slices)}) > 1 for g in groups
      ):
        entry["dcn_count"] += 1
        entry["dcn_bytes"] += nbytes
  return out


# ----------------------------------------------------------------------------- compiling


@dataclasses.dataclass
class Compiled:
  name: str
  memory: Memory
  flops: float | None  # None (and no bytes or collectives): a refused program with no HLO dump
  bytes_accessed: float | None
  collectives: dict[str, dict]


@contextlib.contextmanager
def _mesh_context(mesh, rules):
  """The mesh and sharding rules the trainer traces its steps in (`sharding.in_mesh`), so the
  activations are constrained alike; abstract only: `jax.set_mesh` would also place eager
  constants (the step's base key) on the mesh's devices, which exist only as a description.
  The ops trace the TPU's kernels, not the CPU formulations this process would pick."""
  from bootvae_jax.core import sharding
  from bootvae_jax.ops import backend

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with mesh, sharding.use_abstract_mesh(mesh, rules), backend.target_platform("tpu"):
      yield


_REFUSAL = (
    re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"),
    re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"),
)
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# With the compiler's HBM capped at 1 MiB every real program is refused right after memory
# assignment, its need in the message: minutes, where the full backend compile of a
# paper-scale step takes tens of minutes on a small CPU (results/pod_fit.md).
MEMORY_ONLY_FLAG = "--xla_tpu_max_hbm_size_mib=1"


_OWN_DUMP_DIR: list[str] = []  # the dump folder this process made (emptied after each read)


def use_memory_only() -> None:
  """Memory-only checks for this process (before libtpu and XLA start: both read their flags
  once). The compiler also dumps each program's optimized HLO, which it writes before it
  refuses: its FLOPs, bytes and collectives are read from there (`_dumped_program`); a
  --xla_dump_to already in XLA_FLAGS is used as it is, and left untouched."""
  args = os.environ.get("LIBTPU_INIT_ARGS", "")
  if MEMORY_ONLY_FLAG not in args:
    os.environ["LIBTPU_INIT_ARGS"] = f"{args} {MEMORY_ONLY_FLAG}".strip()
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_dump_to" not in xla_flags:
    dump_dir = tempfile.mkdtemp(prefix="bootvae_aot_hlo_")
    atexit.register(shutil.rmtree, dump_dir, ignore_errors=True)
    _OWN_DUMP_DIR.append(dump_dir)
    os.environ["XLA_FLAGS"] = (
        f"{xla_flags} --xla_dump_to={dump_dir} --xla_dump_disable_metadata=true".strip()
    )


def memory_only() -> bool:
  return MEMORY_ONLY_FLAG in os.environ.get("LIBTPU_INIT_ARGS", "")


def _dumped_program(since: float) -> str | None:
  """The optimized HLO text of the program compiled last, dumped after `since` (the compiler
  writes it before memory assignment, so a refused program has one too). This process's own
  dump folder is emptied after, so the next read sees only the next program's."""
  m = re.search(r"--xla_dump_to=(\S+)", os.environ.get("XLA_FLAGS", ""))
  dump_dir = m.group(1) if m else ""
  if not os.path.isdir(dump_dir):
    return None
  paths = [os.path.join(dump_dir, n) for n in os.listdir(dump_dir)]
  fresh = [
      p for p in paths if p.endswith(".after_optimizations.txt") and os.path.getmtime(p) >= since
  ]
  text = None
  if fresh:
    with open(max(fresh, key=os.path.getmtime)) as f:
      text = f.read()
  if dump_dir in _OWN_DUMP_DIR:
    for path in paths:
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)
  return text


def hlo_cost(hlo_text: str) -> tuple[float, float] | None:
  """(FLOPs, bytes accessed) of an HLO module's text, by XLA's cost analysis on the host
  client: the analysis the TPU compiler reports, run on the module it dumped. None where this
  jaxlib does not expose the parser."""
  import jax

  try:
    from jax._src.lib import _jax as xla_ext  # pylint: disable=g-import-not-at-top
    from jaxlib import _hlo  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  module = _hlo.hlo_module_from_text(hlo_text)
  cost = xla_ext.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def _refusal(error: Exception) -> tuple[int, str, str] | None:
  """(bytes needed, need, capacity as printed) of the TPU compiler's out-of-HBM refusal."""
  message = str(error)
  if "Ran out of memory" not in message and "RESOURCE_EXHAUSTED" not in message:
    return None
  for pattern in _REFUSAL:
    if m := pattern.search(message):
      need, need_unit, cap, cap_unit = m.groups()
      return int(float(need) * _UNIT[need_unit]), need + need_unit, cap + cap_unit
  return 0, "", cli.one_line(message)[:300]


def _program(name: str, lowered, config, parts: dict[str, int], device_slices=None) -> Compiled:
  """Compiles one program and reads its memory, cost and collectives. A refusal that states
  the need (every program, in memory-only mode) gives the memory: the parts as given, the
  rest counted as temporaries; the cost then comes from the module the compiler dumped, where
  there is one. A refusal without a need is `DoesNotFit`."""
  started = time.time()
  try:
    compiled = lowered.compile()
  except Exception as e:  # XlaRuntimeError / JaxRuntimeError: RESOURCE_EXHAUSTED
    refused = _refusal(e)
    if refused is None:
      raise
    need, _, message = refused
    if not need:
      raise DoesNotFit(
          f"{config.get('name', '')} does not fit: the TPU compiler refused its {name} step"
          f" ({message}; {LEVERS_HINT})"
      ) from e
    temporaries = need - sum(parts.values())
    memory = Memory(parts, 0, temporaries, 0, 0, xla={"compiler_need_bytes": need})
    text = _dumped_program(started)
    cost = hlo_cost(text) if text else None
    if cost is None:
      return Compiled(name, memory, None, None, {})
    # The dumped module precedes the TPU's tile padding: its bytes are a lower bound.
    return Compiled(name, memory, *cost, collectives(text, device_slices))
  flops, nbytes = _cost(compiled)
  text = compiled.as_text()
  return Compiled(
      name, memory_of(compiled, parts), flops, nbytes, collectives(text, device_slices)
  )


def _cost(compiled) -> tuple[float, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def _abstract_nets(config):
  """The frozen loss networks as abstract pytrees (LPIPS when weighted; CV-VAE's image VAE in
  the SD layout when a compatibility term is on), so their bytes count and nothing loads."""
  import jax
  from flax import nnx

  from bootvae_jax.losses import compat
  from bootvae_jax.losses import perceptual
  from bootvae_jax.models import image_vae as image_vae_lib
  from bootvae_jax.training import train_step

  lpips = jax.eval_shape(perceptual.LPIPS.from_package) if config.loss.perceptual_weight else None
  image_vae = None
  if compat.enabled(config.get("compat")):
    image_vae = nnx.eval_shape(
        lambda: image_vae_lib.ImageVAE(image_vae_lib.image_vae_config(), rngs=nnx.Rngs(0))
    )
  return train_step.LossNets(lpips=lpips, image_vae=image_vae)


def _with_sharding(tree, sharding):
  import jax

  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _clip_shape(config, batch: int, crop=None):
  h, w = crop or tuple(config.data.crop_size)
  return (batch, int(config.data.num_frames), int(h), int(w), int(config.model.in_channels))


def _train_args(config, devices):
  import jax
  import jax.numpy as jnp

  from bootvae_jax.core import sharding
  from bootvae_jax.training import train_state

  mesh = sharding.make_mesh(config.mesh, devices)
  setup, state = train_state.create_train_state(config, mesh, abstract=True)
  batch = {
      "video": jax.ShapeDtypeStruct(
          _clip_shape(config, int(config.data.batch_size)),
          jnp.float32,
          sharding=sharding.batch_sharding(mesh),
      )
  }
  nets = _with_sharding(_abstract_nets(config), sharding.replicated(mesh))
  return mesh, setup, state, batch, nets


def _state_parts(state, batch, nets) -> dict[str, int]:
  parts = {
      "parameters": per_chip_bytes(state.params),
      "optimizer": per_chip_bytes(
          (state.opt_state, state.step, state.loss_params, state.loss_opt_state)
      ),
      "ema": per_chip_bytes(state.ema_params),
      "frozen": per_chip_bytes(state.frozen),
      "discriminator": per_chip_bytes((state.disc_params, state.disc_opt_state, state.lecam_ema)),
      "loss_nets": per_chip_bytes(nets),
      "batch": per_chip_bytes(batch),
  }
  return parts


def compile_train(config, devices, device_slices=None) -> Compiled:
  from bootvae_jax.training import train_step

  mesh, setup, state, batch, nets = _train_args(config, devices)
  with _mesh_context(mesh, config.sharding_rules):
    lowered = train_step.jit_train_step(setup, nets).lower(state, batch, nets)
    compiled = _program("train", lowered, config, _state_parts(state, batch, nets), device_slices)
  microbatches = train_step.microbatches(config)
  if microbatches > 1 and compiled.flops is not None:
    # XLA's cost analysis counts a loop body once; the accumulation scan runs it N times (the
    # update after the loop is then counted N times too: small beside the body).
    compiled = dataclasses.replace(
        compiled,
        flops=compiled.flops * microbatches,
        bytes_accessed=compiled.bytes_accessed * microbatches,
    )
  return compiled


def jaxpr_flops(jaxpr) -> float:
  """FLOPs of the matrix products and convolutions of a jaxpr (2 per multiply-add), nested
  jaxprs included: a scan's body times its length, a cond's costliest branch. Elementwise ops
  are left out (a few % of a conv net's FLOPs)."""
  import math

  from jax.extend import core as jax_core

  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      k = math.prod(lhs.shape[i] for i in contracting)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      # Every output element is a dot product over the kernel's input features x window.
      rhs = eqn.invars[1].aval
      out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs.shape) / out_features
    inner = list(jax_core.jaxprs_in_params(eqn.params))
    if not inner:
      continue
    costs = [jaxpr_flops(j) for j in inner]
    if name == "cond":
      total += max(costs)
    else:
      total += sum(costs) * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


def model_flops_per_chip(config, devices) -> float:
  """FLOPs per chip of one train step without remat recomputation (the MFU numerator): the
  products and convolutions of the un-rematted step's jaxpr, over the chips. Traced only, so
  it costs seconds and never depends on whether that step would fit."""
  from bootvae_jax.training import train_step

  plain = config.copy_and_resolve_references()
  plain.model.remat = ""
  mesh, setup, state, batch, nets = _train_args(plain, devices)
  with _mesh_context(mesh, config.sharding_rules):
    traced = train_step.jit_train_step(setup, nets).trace(state, batch, nets)
  return jaxpr_flops(traced.jaxpr.jaxpr) / len(devices)


def compile_eval(config, devices) -> Compiled:
  import jax
  import jax.numpy as jnp

  from bootvae_jax.core import sharding
  from bootvae_jax.training import train_step

  mesh, setup, state, _, nets = _train_args(config, devices)
  crop = tuple(config.eval.get("crop_size", ())) or None
  clips = jax.ShapeDtypeStruct(
      _clip_shape(config, int(config.eval.num_clips), crop),
      jnp.float32,
      sharding=sharding.replicated(mesh),
  )
  parts = {
      "parameters": per_chip_bytes(state.params),
      "frozen": per_chip_bytes(state.frozen),
      "loss_nets": per_chip_bytes(nets),
      "batch": per_chip_bytes(clips),
  }
  with _mesh_context(mesh, config.sharding_rules):
    lowered = train_step.jit_eval_step(setup, nets).lower(state.params, state.frozen, clips, nets)
    return _program("eval", lowered, config, parts)


def compile_inference(config, devices) -> list[Compiled]:
  """Encode and decode of ONE clip at the config's size, with the training shardings of the
  parameters (the clip replicated): what a pod serves between steps or after training."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from bootvae_jax.core import sharding

  mesh, setup, state, _, _ = _train_args(config, devices)
  params_s, frozen_s = setup.state_shardings.params, setup.state_shardings.frozen
  rep = sharding.replicated(mesh)
  clip = jax.ShapeDtypeStruct(_clip_shape(config, 1), jnp.float32, sharding=rep)

  def encode(params, frozen, x):
    return nnx.merge(setup.graphdef, params, frozen).encode(x).mean

  def decode(params, frozen, z):
    return nnx.merge(setup.graphdef, params, frozen).decode(z)

  out = []
  with _mesh_context(mesh, config.sharding_rules):
    enc = jax.jit(encode, in_shardings=(params_s, frozen_s, rep), out_shardings=rep)
    z = jax.eval_shape(encode, state.params, state.frozen, clip)
    z = jax.ShapeDtypeStruct(z.shape, z.dtype, sharding=rep)
    dec = jax.jit(decode, in_shardings=(params_s, frozen_s, rep), out_shardings=rep)
    for name, fn, x in (("encode", enc, clip), ("decode", dec, z)):
      parts = {
          "parameters": per_chip_bytes(state.params),
          "frozen": per_chip_bytes(state.frozen),
          "batch": per_chip_bytes(x),
      }
      out.append(_program(name, fn.lower(state.params, state.frozen, x), config, parts))
  return out


# ----------------------------------------------------------------------------- the report


def check(
    config,
    topology: str | None = None,
    num_slices: int = 1,
    steps=STEPS,
) -> dict:
  """Compiles `config` for `num_slices` slices of `topology` (default: the config's
  target_topology) and returns the report (the JSON line's fields, plus 'programs')."""
  from bootvae_jax.core import sharding
  from bootvae_jax.models import remat as remat_lib
  from bootvae_jax.training import config as config_lib
  from bootvae_jax.training import train_step

  # The clips are abstract: nothing is read, so the source's paths need not exist here.
  config = config.copy_and_resolve_references()
  config.data.source = "synthetic"
  config_lib.validate(config)
  topology = topology or config.get("target_topology", "")
  if not topology:
    raise UserError("no topology: pass --topology (e.g. v5e-16) or set config.target_topology")
  if num_slices < 1:
    raise UserError(f"--num_slices={num_slices} must be >= 1")
  if num_slices > 1 and int(config.mesh.get("dcn_data", 1)) == 1:
    config.mesh.dcn_data = num_slices  # data parallel across slices, as a multislice launch runs
  slice_ = tpu_specs.resolve(topology)
  devices = topology_devices(slice_.topology, num_slices)
  slices = [int(getattr(d, "slice_index", 0) or 0) for d in devices]
  spec = slice_.spec
  programs = []
  if "train" in steps:
    train = compile_train(config, devices, slices)
    programs.append(train)
  if "eval" in steps:
    programs.append(compile_eval(config, devices))
  if "inference" in steps:
    programs += compile_inference(config, devices)
  capacity = spec.hbm_gib * GIB
  peak = max(programs, key=lambda p: p.memory.total)
  report: dict[str, Any] = {
      "config": config.get("name", ""),
      "topology": slice_.name,
      "libtpu_topology": slice_.topology,
      "num_slices": num_slices,
      "chips": len(devices),
      "hbm_per_chip_gib": round(peak.memory.total / GIB, 3),
      "hbm_capacity_gib": spec.hbm_gib,
      "headroom_pct": round(100 * (1 - peak.memory.total / capacity), 1),
      "fits": peak.memory.total <= capacity,
      "peak_program": peak.name,
      "global_batch": int(config.data.batch_size),
      "clip": list(_clip_shape(config, 1)[1:4]),
      "dtype": config.model.dtype,
      "remat": remat_lib.policy(config.model.remat),
      "microbatches": train_step.microbatches(config),
      "mesh": sharding.mesh_axis_sizes(config.mesh, len(devices)),
  }
  for p in programs:
    report[f"{p.name}_memory_gib"] = {
        **{k: round(v / GIB, 4) for k, v in p.memory.parts.items()},
        "padding": round(p.memory.padding / GIB, 4),
        "temporaries": round(p.memory.temporaries / GIB, 4),
        "outputs": round(p.memory.outputs / GIB, 4),
        "code": round(p.memory.code / GIB, 4),
        "total": round(p.memory.total / GIB, 4),
    }
  report["memory_only"] = memory_only()
  if "train" in steps:
    flops = model_flops_per_chip(config, devices)
    report.update(model_flops_per_chip=flops, step_flops_per_chip=train.flops)
    if train.flops is None:  # no cost analysis: the model FLOPs' compute time
      report.update(
          step_bytes_per_chip=None,
          roofline_step_s=flops / (spec.bf16_tflops * 1e12),
          roofline_bound="compute (model FLOPs only: HBM bytes not measured)",
          mfu_bound=None,
          collectives=None,
      )
    else:
      compute_s = train.flops / (spec.bf16_tflops * 1e12)
      memory_s = train.bytes_accessed / (spec.hbm_gbps * 1e9)
      roofline = max(compute_s, memory_s)
      report.update(
          step_bytes_per_chip=train.bytes_accessed,
          roofline_step_s=roofline,
          roofline_bound="compute" if compute_s >= memory_s else "memory",
          mfu_bound=round(flops / (spec.bf16_tflops * 1e12) / roofline, 4) if roofline else 0.0,
          collectives={k: v for k, v in train.collectives.items() if v["count"]},
      )
  report["programs"] = programs
  return report


def _fmt_gib(n: int) -> str:
  return f"{n / GIB:8.3f}"


def format_table(report: dict) -> str:
  programs = report["programs"]
  rows = ["parameters", "optimizer", "ema", "frozen", "discriminator", "loss_nets", "batch"]
  lines = [
      f"{report['config']} on {report['num_slices']} x {report['topology']}"
      f" ({report['libtpu_topology']}, {report['chips']} chips),"
      f" HBM {report['hbm_capacity_gib']:g} GiB per chip",
      "per-chip HBM (GiB)  " + "".join(f"{p.name:>10}" for p in programs),
  ]
  for row in rows + ["padding", "temporaries", "outputs", "code", "total"]:
    cells = []
    for p in programs:
      m = p.memory
      value = {
          "padding": m.padding,
          "temporaries": m.temporaries,
          "outputs": m.outputs,
          "code": m.code,
          "total": m.total,
      }.get(row, m.parts.get(row))
      cells.append(f"{'-':>10}" if value is None else f"  {_fmt_gib(value)}")
    lines.append(f"  {row:<18}" + "".join(cells))
  lines.append(
      f"  peak {report['hbm_per_chip_gib']:.2f} GiB of {report['hbm_capacity_gib']:g} GiB"
      f" ({report['peak_program']}): headroom {report['headroom_pct']:.1f}%"
      f" -> {'fits' if report['fits'] else 'DOES NOT FIT'}"
  )
  if report.get("memory_only"):
    lines.append(
        "memory only (--memory_only): the compiler's per-chip need; beyond the arguments it is"
        " all counted as temporaries"
        + ("" if report["step_flops_per_chip"] is None else "; HBM traffic before tile padding")
    )
  if report.get("step_flops_per_chip") is None:
    if "model_flops_per_chip" in report:
      lines.append(
          f"model FLOPs per chip {report['model_flops_per_chip'] / 1e12:.3f} TFLOP,"
          f" at peak {report['roofline_step_s'] * 1e3:.1f} ms"
      )
  else:
    lines += [
        f"train step per chip: {report['step_flops_per_chip'] / 1e12:.3f} TFLOP"
        f" (model {report['model_flops_per_chip'] / 1e12:.3f}),"
        f" {report['step_bytes_per_chip'] / 1e9:.3f} GB HBM traffic",
        f"roofline step {report['roofline_step_s'] * 1e3:.1f} ms ({report['roofline_bound']}-bound),"
        f" MFU bound {100 * report['mfu_bound']:.1f}%",
        "collectives per step per chip (kind: count, MB, of which across slices):",
    ]
    for kind, c in report["collectives"].items():
      lines.append(
          f"  {kind:<19} {c['count']:5d} {c['bytes'] / 1e6:10.2f} MB"
          f"   DCN {c['dcn_count']:4d} {c['dcn_bytes'] / 1e6:10.2f} MB"
      )
  return "\n".join(lines)


def json_line(report: dict) -> str:
  return json.dumps({k: v for k, v in report.items() if k != "programs"}, sort_keys=False)


def shortfall(report: dict) -> str:
  need, have = report["hbm_per_chip_gib"], report["hbm_capacity_gib"]
  return (
      f"{report['config']} does not fit {report['num_slices']} x {report['topology']}: its"
      f" {report['peak_program']} step needs {need:.2f} GiB per chip, {need - have:.2f} GiB"
      f" more than the {have:g} GiB of HBM ({LEVERS_HINT})"
  )


# Defined through `cli.define_flag`: tests import this module beside other command lines.
_CONFIG = cli.define_flag(
    config_flags.DEFINE_config_file, "config", None, "Training config file.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice, e.g. v5e-16, v5p-8, v6e-256 (default: config.target_topology)."
)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (multislice).")
_MEMORY_ONLY = flags.DEFINE_bool(
    "memory_only",
    False,
    "Only the per-chip HBM each program needs, from the compiler's memory assignment (minutes"
    " instead of the full backend compile; no FLOP / byte counts or collectives).",
)
_STEPS = flags.DEFINE_list("steps", list(STEPS), f"Programs to compile, of {STEPS}.")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise UserError("--config is required (a file under bootvae_jax/configs/)")
  steps = tuple(_STEPS.value)
  if unknown := [s for s in steps if s not in STEPS]:
    raise UserError(f"--steps: unknown {unknown}; use some of {STEPS}")
  if _MEMORY_ONLY.value:
    use_memory_only()
  try:
    report = check(_CONFIG.value, _TOPOLOGY.value, _NUM_SLICES.value, steps)
  except DoesNotFit as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_DOES_NOT_FIT)
  print(format_table(report))
  print(json_line(report), flush=True)
  if not report["fits"]:
    print(f"error: {shortfall(report)}", file=sys.stderr)
    sys.exit(EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  cli.run(main)
