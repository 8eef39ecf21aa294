"""The one sharding vocabulary: a device mesh, logical axis names, and the rules between them.

Nothing in a model names a mesh axis. Parameters carry logical names (`PARAM_AXES`, attached in
`models/layers.py`), activations are constrained by logical names (`VIDEO_AXES`), and one rules
table (`config.sharding_rules`, default `DEFAULT_RULES`) maps every logical name to a mesh
axis, a tuple of mesh axes, or None (not split), as in MaxText:

    mesh = sharding.make_mesh(config.mesh)          # all devices, or make_mesh(cfg, devices)
    shardings = sharding.tree_shardings(abstract_state, mesh, config.sharding_rules)
    step = sharding.in_mesh(jax.jit(step_fn, ...), mesh, config.sharding_rules)
    # in model code, traced inside the mesh (`in_mesh` / `with use_mesh(mesh, rules):`):
    y = sharding.constrain(y, sharding.VIDEO_AXES)  # (B, T, H, W, C)

A dimension that its mesh axes do not divide stays whole, so the same rules serve a tiny test
model and a pod-sized one. `constrain` pins only the dimensions the rules split (XLA places
the rest) and is the identity outside a mesh. The rules are read when a function is traced:
trace it inside the `use_mesh` whose rules it should follow. `devices` may be any device list,
e.g. an ahead-of-time topology's, so compile checks build the very mesh training will use.

The mesh (`MESH_AXES`) is `('dcn_data', 'data', 'fsdp', 'spatial')`: `dcn_data` is data
parallelism across slices over the data-centre network; `data`, `fsdp` and `spatial` live
inside a slice (ICI). `config.mesh` gives each axis a size; one ICI axis may be -1 to take the
devices left. Batches are split over `BATCH_AXES`; the default rules split conv output
channels over `fsdp` and frame height over `spatial` (inference puts every device there:
`make_mesh({"spatial": -1})`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bootvae_jax.cli import UserError

DCN_AXES = ("dcn_data",)
ICI_AXES = ("data", "fsdp", "spatial")
MESH_AXES = DCN_AXES + ICI_AXES
# Data parallelism: the axes a global batch is split over.
BATCH_AXES = ("dcn_data", "data", "fsdp")

PARAM_AXES = ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")
VIDEO_AXES = ("batch", "time", "height", "width", "channels")
LOGICAL_AXES = PARAM_AXES + VIDEO_AXES

DEFAULT_RULES = (
    # Parameters: FSDP splits output channels (kernels, biases, norm scales).
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    # Activations: the batch over every data-parallel axis, frame height over `spatial`.
    ("batch", BATCH_AXES),
    ("time", None),
    ("height", "spatial"),
    ("width", None),
    ("channels", None),
)

Rules = Sequence[tuple[str, Any]]


# ----------------------------------------------------------------------------------------------
# The mesh.


def validate_mesh_config(mesh_config: Mapping[str, Any]) -> None:
  """Raises UserError for a `config.mesh` no device count can satisfy."""
  for name in mesh_config.keys():
    if name not in MESH_AXES:
      raise UserError(f"config.mesh.{name} is not a mesh axis; the axes are {MESH_AXES}")
  for name, size in mesh_config.items():
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool):
      raise UserError(f"config.mesh.{name}={size!r} must be an integer")
  for name in DCN_AXES:
    if int(mesh_config.get(name, 1)) < 1:
      raise UserError(
          f"config.mesh.{name}={mesh_config[name]} must be >= 1 (the number of slices the"
          " batch is split over)"
      )
  ici = {name: int(mesh_config.get(name, 1)) for name in ICI_AXES}
  for name, size in ici.items():
    if size < 1 and size != -1:
      raise UserError(f"config.mesh.{name}={size} must be >= 1, or -1 to take the devices left")
  if list(ici.values()).count(-1) > 1:
    raise UserError(f"at most one of config.mesh.{{{','.join(ICI_AXES)}}} may be -1, got {ici}")


def mesh_axis_sizes(mesh_config: Mapping[str, Any], device_count: int) -> dict[str, int]:
  """Each of `MESH_AXES`' size for `device_count` devices (absent fields are 1, a -1 takes
  the devices of a slice that the other ICI axes leave)."""
  validate_mesh_config(mesh_config)
  sizes = {name: int(mesh_config.get(name, 1)) for name in MESH_AXES}
  slices = math.prod(sizes[name] for name in DCN_AXES)
  if device_count % slices:
    raise UserError(
        f"config.mesh.dcn_data={slices} does not divide the {device_count} devices into slices"
    )
  per_slice = device_count // slices
  known = math.prod(size for name, size in sizes.items() if name in ICI_AXES and size != -1)
  for name in ICI_AXES:
    if sizes[name] == -1:
      if per_slice % known:
        raise UserError(
            f"config.mesh {sizes} cannot fill the {per_slice} devices of each slice:"
            f" {per_slice} is not divisible by {known}"
        )
      sizes[name] = per_slice // known
  if math.prod(sizes.values()) != device_count:
    raise UserError(
        f"config.mesh {sizes} needs {math.prod(sizes.values())} devices; {device_count} are"
        " available (set config.mesh.data=-1 to take them all)"
    )
  return sizes


def device_grid(mesh_config: Mapping[str, Any], devices: Sequence[Any]) -> np.ndarray:
  """The devices as an array of shape `mesh_axis_sizes`, in `MESH_AXES` order.

  ICI axes follow the physical topology (`mesh_utils.create_device_mesh`); with `dcn_data`
  > 1, each of its rows is one slice (`create_hybrid_device_mesh`, devices grouped by
  `slice_index`). The result is then process-major (a stable sort on `process_index`):
  devices of process p come before those of p+1 in row-major order, so global batch rows
  [p·b, (p+1)·b) land on process p's devices, the block its data pipeline reads.
  """
  devices = list(devices)
  sizes = mesh_axis_sizes(mesh_config, len(devices))
  dcn = [sizes[name] if name in DCN_AXES else 1 for name in MESH_AXES]
  ici = [sizes[name] if name in ICI_AXES else 1 for name in MESH_AXES]
  if math.prod(dcn) > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=True)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  ordered = sorted(grid.flat, key=lambda device: device.process_index)
  return np.asarray(ordered, dtype=object).reshape(grid.shape)


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of `config.mesh` (axes `MESH_AXES`) over `devices` (default: all)."""
  devices = list(devices if devices is not None else jax.devices())
  return Mesh(device_grid(mesh_config, devices), MESH_AXES)


# ----------------------------------------------------------------------------------------------
# Logical names → mesh axes.


def validate_rules(rules: Rules) -> None:
  """Raises UserError for a `config.sharding_rules` entry naming an unknown logical or mesh
  axis, or a logical name given twice."""
  seen = set()
  for entry in rules:
    if len(entry) != 2:
      raise UserError(f"config.sharding_rules entry {entry!r} must be (logical name, mesh axes)")
    name, axes = entry
    if name not in LOGICAL_AXES:
      raise UserError(
          f"config.sharding_rules names {name!r}, not a logical axis; they are {LOGICAL_AXES}"
      )
    if name in seen:
      raise UserError(f"config.sharding_rules maps {name!r} twice")
    seen.add(name)
    for axis in _axes(axes):
      if axis not in MESH_AXES:
        raise UserError(
            f"config.sharding_rules maps {name!r} to {axis!r}, not a mesh axis; they are"
            f" {MESH_AXES}"
        )


def validate(mesh_config: Mapping[str, Any], rules: Rules) -> None:
  """The config validation pass's check of `config.mesh` and `config.sharding_rules`."""
  validate_mesh_config(mesh_config)
  validate_rules(rules)


def _axes(value) -> tuple[str, ...]:
  """A rule's target as a tuple: None → (), 'fsdp' → ('fsdp',); lists (from JSON) too."""
  if value is None:
    return ()
  return (value,) if isinstance(value, str) else tuple(value)


def logical_to_mesh_spec(
    names: Sequence[str | None] | None, shape: Sequence[int], rules: Rules, mesh
) -> P:
  """The PartitionSpec of one array: each dimension split over the mesh axes its logical name
  maps to, leaving out axes of size 1, axes the mesh lacks and axes an earlier dimension
  took; a dimension those axes do not divide stays whole (None). `mesh` may be abstract."""
  if not names:
    return P()
  table = {name: _axes(axes) for name, axes in rules}
  used, spec = set(), []
  for name, size in zip(names, shape):
    axes = tuple(
        axis
        for axis in table.get(name, ())
        if axis in mesh.axis_names and mesh.shape[axis] > 1 and axis not in used
    )
    if not axes or size % math.prod(mesh.shape[axis] for axis in axes):
      spec.append(None)
      continue
    spec.append(axes[0] if len(axes) == 1 else axes)
    used.update(axes)
  return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int], rules: Rules):
  """NamedSharding of an array of `shape` whose dimensions carry logical `names`."""
  return NamedSharding(mesh, logical_to_mesh_spec(names, shape, rules, mesh))


def batch_sharding(mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
  """Leading (batch) axis split over the mesh axes `axes` that the mesh has (size-1 ones too,
  so the spec's first entry lists the data-parallel axes of any mesh built by `make_mesh`)."""
  axes = tuple(axis for axis in axes if axis in mesh.axis_names)
  return NamedSharding(mesh, P(axes or None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a pytree whose leaves may be `nnx.Variable`s with logical names
  (`out_sharding` metadata); optimizer moments inherit them from the parameters they mirror.
  Plain leaves (step counters, scalars) are replicated."""

  def leaf_sharding(x):
    if _is_variable(x):
      names = x.get_metadata().get("out_sharding")
      return x.replace(named_sharding(mesh, names, x.shape, rules))
    return NamedSharding(mesh, P())

  return jax.tree.map(leaf_sharding, abstract_tree, is_leaf=_is_variable)


# ----------------------------------------------------------------------------------------------
# Activations.

_ACTIVE_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar(
    "sharding_rules", default=None
)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[Mesh]:
  """Makes `mesh` the current mesh (`jax.set_mesh`) and `rules` the ones `constrain` reads.
  Enter it outside `jax.jit`, around the calls that trace."""
  token = _ACTIVE_RULES.set(tuple(rules))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE_RULES.reset(token)


@contextlib.contextmanager
def use_abstract_mesh(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[Mesh]:
  """`use_mesh` for tracing alone: `constrain` sees `mesh` and `rules`, but nothing is placed
  on its devices (ahead-of-time compilation for devices that are described, not attached)."""
  token = _ACTIVE_RULES.set(tuple(rules))
  try:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      yield mesh
  finally:
    _ACTIVE_RULES.reset(token)


def in_mesh(fn: Callable[..., Any], mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Callable:
  """`fn` (e.g. a jitted step) called inside `use_mesh(mesh, rules)` every time, so that it is
  traced there; arrays made outside it stay as they are."""

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with use_mesh(mesh, rules):
      return fn(*args, **kwargs)

  return call


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x` constrained to the sharding its logical dimension `names` get from the active rules.

  Only dimensions the rules split are pinned; the others are left to XLA. The identity when
  no mesh is active (outside `use_mesh` / `jax.set_mesh`) or when no dimension is split.
  """
  if len(names) != x.ndim:
    raise ValueError(f"{len(names)} logical names {tuple(names)} for an array of shape {x.shape}")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  rules = _ACTIVE_RULES.get()
  spec = logical_to_mesh_spec(names, x.shape, DEFAULT_RULES if rules is None else rules, mesh)
  if all(axes is None for axes in spec):
    return x
  spec = P(*(P.UNCONSTRAINED if axes is None else axes for axes in spec))
  return jax.lax.with_sharding_constraint(x, spec)
