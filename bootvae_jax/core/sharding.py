"""Device mesh and shardings: logical axis names on parameters → mesh axes by config rules.

Parameters carry logical names (`conv_t, conv_h, conv_w, conv_in, conv_out`, see
`models/layers.py`). `config.sharding_rules` maps each name to a mesh axis (or None), as in
maxtext / big_vision:

    config.sharding_rules = (("conv_out", "fsdp"), ("conv_in", None))

A dimension whose size is not divisible by its mesh axis stays replicated, so the same rules
serve a tiny test model and a pod-sized one. Batches are sharded over every mesh axis.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh; one axis may be -1 to take the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one of mesh.{MESH_AXES} may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot fill mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices;"
        f" {len(devices)} are available (set config.mesh.data=-1 to fill)"
    )
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def batch_sharding(mesh: Mesh, axes: Sequence[str] = MESH_AXES) -> NamedSharding:
  """Leading (batch) axis split over the mesh axes `axes` (default all; absent axes ignored)."""
  axes = tuple(axis for axis in axes if axis in mesh.axis_names)
  return NamedSharding(mesh, P(axes or None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_mesh_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    rules: Sequence[tuple[str, str | None]],
    mesh: Mesh,
) -> P:
  """The PartitionSpec of one array: each logical name mapped by `rules`, each mesh axis used
  at most once, and dimensions the axis does not divide left replicated."""
  if not names:
    return P()
  table = dict(rules)
  used, spec = set(), []
  for name, size in zip(names, shape):
    axis = table.get(name)
    if axis is None or axis in used or size % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return P(*spec)


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a pytree whose leaves may be `nnx.Variable`s with logical names
  (`out_sharding` metadata); optimizer moments inherit them from the parameters they mirror.
  Plain leaves (step counters, scalars) are replicated."""

  def leaf_sharding(x):
    if _is_variable(x):
      names = x.get_metadata().get("out_sharding")
      spec = logical_to_mesh_spec(names, x.shape, rules, mesh)
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(leaf_sharding, abstract_tree, is_leaf=_is_variable)
