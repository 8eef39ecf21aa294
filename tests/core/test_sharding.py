"""The sharding vocabulary (`bootvae_jax.core.sharding`): the mesh, logical names → mesh axes,
and activation constraints, on the 4 fake CPU devices of tests/conftest.py."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bootvae_jax import models
from bootvae_jax.cli import UserError
from bootvae_jax.core import sharding
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder
from bootvae_jax.training import config as config_lib


def _spec(names, shape, mesh, rules=sharding.DEFAULT_RULES):
  return sharding.logical_to_mesh_spec(names, shape, rules, mesh)


# ----------------------------------------------------------------------------------------------
# The rules table.


def test_default_rules_name_every_logical_axis_once():
  assert [name for name, _ in sharding.DEFAULT_RULES] == list(sharding.LOGICAL_AXES)
  assert config_lib.default_config().sharding_rules == sharding.DEFAULT_RULES
  sharding.validate_rules(sharding.DEFAULT_RULES)


def test_every_parameter_name_of_a_model_is_in_the_vocabulary():
  config = architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, num_groups=4
  )
  model = nnx.eval_shape(lambda: models.build_model(config, rngs=autoencoder.init_rngs(0)))
  names = set()
  for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names.update(variable.get_metadata().get("out_sharding") or ())
  assert names == set(sharding.PARAM_AXES)


def test_rules_map_parameter_and_activation_names():
  training = sharding.make_mesh({"data": 2, "fsdp": 2})
  video = sharding.VIDEO_AXES
  # The batch over every data-parallel axis of size > 1; height over `spatial` (size 1 here).
  assert _spec(video, (4, 5, 16, 16, 3), training) == P(("data", "fsdp"), None, None, None, None)
  assert _spec(video, (2, 5, 16, 16, 3), training) == P(None, None, None, None, None)  # 2 % 4
  # Parameters: output channels over fsdp when it divides them.
  kernel = sharding.PARAM_AXES
  assert _spec(kernel, (3, 3, 3, 4, 8), training) == P(None, None, None, None, "fsdp")
  assert _spec(kernel, (3, 3, 3, 8, 3), training) == P(None, None, None, None, None)
  inference = sharding.make_mesh({"spatial": -1})
  assert _spec(video, (1, 5, 16, 8, 3), inference) == P(None, None, "spatial", None, None)
  assert _spec(video, (1, 5, 6, 8, 3), inference) == P(None, None, None, None, None)  # 6 % 4
  # A mesh axis serves one dimension; rules read back from JSON (lists) work the same.
  rules = [["batch", ["data"]], ["height", "data"], ["width", None]]
  assert _spec(video, (2, 5, 16, 8, 3), training, rules) == P("data", None, None, None, None)
  assert _spec(video, (3, 5, 16, 8, 3), training, rules) == P(None, None, "data", None, None)
  # A mesh without some rule axes (a hand-made one) uses those it has.
  plain = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2), ("data", "fsdp"))
  assert sharding.batch_sharding(plain).spec == P(("data", "fsdp"))
  assert sharding.batch_sharding(training).spec == P(sharding.BATCH_AXES)
  assert sharding.batch_sharding(training).is_equivalent_to(
      NamedSharding(plain, P(("data", "fsdp"))), 1
  )
  assert sharding.batch_sharding(inference).is_fully_replicated


@pytest.mark.parametrize(
    "rules,message",
    [
        ((("height", "spatial"), ("height", None)), "maps 'height' twice"),
        ((("rows", "spatial"),), "'rows', not a logical axis"),
        ((("height", "tensor"),), "'tensor', not a mesh axis"),
        ((("batch", ("data", "model")),), "'model', not a mesh axis"),
        ((("height",),), "must be \\(logical name, mesh axes\\)"),
    ],
)
def test_bad_rules_are_user_errors(rules, message):
  with pytest.raises(UserError, match=message):
    sharding.validate({"data": -1}, rules)


# ----------------------------------------------------------------------------------------------
# Activations.


def test_constrain_is_the_identity_without_a_mesh(jaxpr_equations):
  x = jnp.ones((4, 5, 16, 16, 3))
  assert sharding.constrain(x, sharding.VIDEO_AXES) is x
  jaxpr = jax.make_jaxpr(lambda x: sharding.constrain(x, sharding.VIDEO_AXES))(x)
  assert not [e for e in jaxpr_equations(jaxpr) if e.primitive.name == "sharding_constraint"]
  with pytest.raises(ValueError, match="5 logical names"):
    sharding.constrain(x[0], sharding.VIDEO_AXES)


def _constrained(x):
  """`x` through `constrain` under jit: (output, the sharding seen inside)."""
  seen = []

  def fn(x):
    y = sharding.constrain(2.0 * x, sharding.VIDEO_AXES)
    jax.debug.inspect_array_sharding(y, callback=seen.append)
    return y

  out = jax.jit(fn)(x)
  jax.effects_barrier()
  return out, seen[0]


def test_constrain_splits_height_over_four_devices_when_the_rules_say_so():
  assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"
  mesh = sharding.make_mesh({"spatial": -1})
  x = np.arange(1 * 3 * 8 * 4 * 2, dtype=np.float32).reshape(1, 3, 8, 4, 2)
  with sharding.use_mesh(mesh, sharding.DEFAULT_RULES):
    out, inside = _constrained(x)
  by_height = NamedSharding(mesh, P(None, None, "spatial"))
  assert inside.is_equivalent_to(by_height, 5)
  assert out.sharding.is_equivalent_to(by_height, 5)
  assert {shard.data.shape for shard in out.addressable_shards} == {(1, 3, 2, 4, 2)}
  np.testing.assert_array_equal(np.asarray(out), 2.0 * x)
  # Rules that keep height whole: nothing is pinned, the whole frame stays on each device.
  keep = tuple((name, None if name == "height" else axes) for name, axes in sharding.DEFAULT_RULES)
  with sharding.use_mesh(mesh, keep):
    out, inside = _constrained(x)
  assert inside.is_fully_replicated and out.sharding.is_fully_replicated
  # The training mesh splits the batch.
  training = sharding.make_mesh({"data": 2, "fsdp": 2})
  with sharding.use_mesh(training):
    out, inside = _constrained(np.zeros((4, 3, 8, 4, 2), np.float32))
  assert inside.is_equivalent_to(NamedSharding(training, P(("data", "fsdp"))), 5)
  # Leaving the context restores no mesh and the rules.
  assert jax.sharding.get_abstract_mesh().empty
  assert sharding.constrain(x, sharding.VIDEO_AXES) is x


def test_in_mesh_traces_a_function_inside_the_mesh():
  mesh = sharding.make_mesh({"spatial": -1})
  fn = sharding.in_mesh(jax.jit(lambda x: sharding.constrain(x, sharding.VIDEO_AXES)), mesh)
  out = fn(np.zeros((1, 1, 8, 4, 2), np.float32))
  assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(None, None, "spatial")), 5)
  assert jax.sharding.get_abstract_mesh().empty


# ----------------------------------------------------------------------------------------------
# The mesh.


def test_make_mesh_axes_and_sizes():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2})
  assert mesh.axis_names == sharding.MESH_AXES == ("dcn_data", "data", "fsdp", "spatial")
  assert dict(mesh.shape) == {"dcn_data": 1, "data": 2, "fsdp": 2, "spatial": 1}
  assert dict(sharding.make_mesh(config_lib.default_config().mesh).shape)["data"] == 4
  assert dict(sharding.make_mesh({"fsdp": -1}, jax.devices()[:2]).shape)["fsdp"] == 2
  assert sharding.mesh_axis_sizes(dict(dcn_data=2, data=-1, fsdp=2), 16) == {
      "dcn_data": 2,
      "data": 4,
      "fsdp": 2,
      "spatial": 1,
  }


@pytest.mark.parametrize(
    "mesh_config,message",
    [
        (dict(data=-1, fsdp=-1), "at most one"),
        (dict(dcn_data=3, data=-1), "dcn_data=3 does not divide the 4 devices"),
        (dict(dcn_data=0), "must be >= 1"),
        (dict(data=3), "needs 3 devices; 4 are available"),
        (dict(data=-1, fsdp=3), "not divisible by 3"),
        (dict(data=0), "must be >= 1, or -1"),
        (dict(model=2), "config.mesh.model is not a mesh axis"),
        (dict(data="2"), "must be an integer"),
    ],
)
def test_bad_mesh_configs_are_user_errors(mesh_config, message):
  with pytest.raises(UserError, match=message):
    sharding.make_mesh(mesh_config)


def test_config_validation_checks_mesh_and_rules():
  config = config_lib.default_config()
  config.mesh.fsdp = -1
  with pytest.raises(UserError, match="at most one"):
    config_lib.validate(config)
  config = config_lib.default_config()
  config.sharding_rules = (("conv_out", "model"),)
  with pytest.raises(UserError, match="'model', not a mesh axis"):
    config_lib.validate(config)


def _fake_devices(slices, processes_per_slice, devices_per_process, order):
  """CPU-like device stand-ins with slice and process indices (CPU devices have no slice)."""
  devices = []
  for slice_index in range(slices):
    for local in range(processes_per_slice):
      process = slice_index * processes_per_slice + local
      for _ in range(devices_per_process):
        devices.append(
            types.SimpleNamespace(
                id=len(devices),
                process_index=process,
                slice_index=slice_index,
                platform="cpu",
                device_kind="cpu",
            )
        )
  return [devices[i] for i in order(len(devices))]


def test_hybrid_grid_puts_one_slice_per_dcn_row_process_major():
  # 2 slices x 2 processes x 2 devices, listed in a shuffled order.
  shuffle = lambda n: np.random.default_rng(0).permutation(n)
  devices = _fake_devices(2, 2, 2, shuffle)
  grid = sharding.device_grid(dict(dcn_data=2, data=-1, fsdp=2), devices)
  assert grid.shape == (2, 2, 2, 1)
  for row in range(2):
    assert {device.slice_index for device in grid[row].flat} == {row}
  processes = [device.process_index for device in grid.flat]
  assert processes == sorted(processes) == [0, 0, 1, 1, 2, 2, 3, 3]
  assert sorted(device.id for device in grid.flat) == list(range(8))


def test_grid_is_process_major_so_each_process_reads_a_contiguous_block():
  """data/pipeline.py gives process p global batch rows [p·b, (p+1)·b): the batch axes'
  row-major device order must list process p's devices after process p-1's."""
  # One slice, 4 processes of 2 devices, interleaved as a topology-ordered list might be.
  interleave = lambda n: list(range(0, n, 2)) + list(range(1, n, 2))  # processes 0 1 2 3 0 1 2 3
  devices = _fake_devices(1, 4, 2, interleave)
  grid = sharding.device_grid(dict(data=-1, fsdp=2), devices)
  assert grid.shape == (1, 4, 2, 1)
  # Batch shard k (row-major over dcn_data, data, fsdp) belongs to process k // 2.
  assert [device.process_index for device in grid.flat] == [0, 0, 1, 1, 2, 2, 3, 3]
  # And batch rows follow that order: device k of the mesh holds rows [k·b, (k+1)·b).
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2})
  rows = sharding.batch_sharding(mesh).devices_indices_map((8,))
  assert [rows[device][0] for device in mesh.devices.flat] == [
      slice(2 * k, 2 * k + 2) for k in range(4)
  ]
