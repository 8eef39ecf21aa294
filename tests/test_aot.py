"""The TPU fit check (bootvae_jax/aot.py): real TPU compiles of a tiny config, deviceless.

Needs libtpu (requirements-test.txt); skipped only where it is not importable.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # pytest-xdist workers each load it

import pytest

from bootvae_jax import aot
from bootvae_jax.cli import UserError
from bootvae_jax.core import tpu_specs
from bootvae_jax.models import architectures
from bootvae_jax.training.config import default_config

needs_libtpu = pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None, reason="libtpu is not installed"
)
GIB = 1024**3


def tiny(**mesh):
  """The training tests' tiny model (widths 8, no attention) on 5 x 16 x 16 clips, batch 8."""
  config = default_config()
  config.name = "tiny"
  config.model = architectures.promag_base(
      z_dim=4, base_channels=8, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, num_groups=4
  )
  config.model.encoder.mid_attention = "none"
  config.model.decoder.mid_attention = "none"
  config.data.num_frames = 5
  config.data.crop_size = (16, 16)
  config.data.batch_size = 8
  config.mesh.update({"data": -1, "fsdp": 1, **mesh})
  return config


def _aot_cli(*flags):
  """`python -m bootvae_jax.aot --config=<the demo config> FLAGS` from the repository root."""
  return subprocess.run(
      [sys.executable, "-m", "bootvae_jax.aot", "--config=bootvae_jax/configs/demo.py", *flags],
      capture_output=True,
      text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )


# ----------------------------------------------------------------------------- no compiler


@pytest.mark.parametrize(
    "name, topology, chips",
    [
        ("v5e-16", "v5e:4x4", 16),
        ("v5e-256", "v5e:16x16", 256),
        ("v5p-8", "v5p:2x2x1", 4),
        ("v5p-64", "v5p:2x4x4", 32),
        ("v6e-16", "v6e:4x4", 16),
        ("v5e:2x2", "v5e:2x2", 4),
    ],
)
def test_slice_names_map_to_libtpu_topologies(name, topology, chips):
  s = tpu_specs.resolve(name)
  assert (s.topology, s.chips) == (topology, chips)


def test_unknown_slice_lists_the_valid_ones():
  with pytest.raises(UserError, match=r"v5e-16, .*v5p-8, .*v6e-256") as e:
    tpu_specs.resolve("v5e-12")
  assert "\n" not in str(e.value)


def test_replica_groups_in_every_hlo_form():
  assert aot._replica_groups("x, replica_groups={{0,1},{2,3}}, y") == [[0, 1], [2, 3]]
  assert aot._replica_groups("replica_groups=[2,2]<=[4], dims") == [[0, 1], [2, 3]]
  assert aot._replica_groups("replica_groups=[2,2]<=[2,2]T(1,0), d") == [[0, 2], [1, 3]]
  mesh = "replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0'}, use"
  assert aot._replica_groups(mesh) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_collective_bytes_and_dcn():
  hlo = "\n".join(
      [
          "  %a = f32[1024]{0} all-reduce(%x), channel_id=1, replica_groups={{0,2},{1,3}}, to_apply=%s",
          "  %b = bf16[8,16]{1,0} all-gather(%y), replica_groups=[2,2]<=[4], dimensions={0}",
          "  %c = (f32[4]{0}, f32[16]{0}) all-gather-start(%z), replica_groups={{0,1,2,3}}",
      ]
  )
  out = aot.collectives(hlo, device_slices=[0, 0, 1, 1])
  assert out["all-reduce"] == {"count": 1, "bytes": 4096, "dcn_count": 1, "dcn_bytes": 4096}
  assert out["all-gather"] == {"count": 2, "bytes": 256 + 64, "dcn_count": 1, "dcn_bytes": 64}


# ----------------------------------------------------------------------------- the compiler


@pytest.fixture(scope="module")
def v5e_report():
  return aot.check(tiny(), "v5e:2x2", steps=("train",))


@needs_libtpu
def test_tiny_config_compiles_for_v5e_and_its_memory_adds_up(v5e_report):
  r = v5e_report
  assert (r["chips"], r["hbm_capacity_gib"], r["fits"]) == (4, 16.0, True)
  memory = r["programs"][0].memory
  xla = memory.xla
  # The parts are the arguments XLA counts, by role; padding is its tiled layouts' extra.
  assert memory.arguments == xla["argument_size_in_bytes"]
  assert 0 <= memory.padding < xla["argument_size_in_bytes"]
  assert memory.total == (
      xla["argument_size_in_bytes"]
      + xla["output_size_in_bytes"]
      - xla["alias_size_in_bytes"]
      + xla["temp_size_in_bytes"]
      + xla["generated_code_size_in_bytes"]
  )
  # The donated state aliases the new state: only the metrics are fresh outputs.
  assert memory.outputs < 64 * 1024  # a few tiled scalars
  # Data parallel: every chip holds all parameters (float32), twice that of Adam moments.
  from bootvae_jax.models import autoencoder
  from flax import nnx
  import jax

  model = nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(tiny().model, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert memory.parts["parameters"] == memory.parts["ema"] == 4 * n
  assert 2 * 4 * n <= memory.parts["optimizer"] <= 2 * 4 * n + 64
  assert memory.parts["batch"] == 8 // 4 * 5 * 16 * 16 * 3 * 4
  assert r["step_flops_per_chip"] > 0 and r["roofline_step_s"] > 0
  assert 0 < r["mfu_bound"] <= 1
  assert r["collectives"]["all-reduce"]["count"] >= 1  # the gradient mean over data
  assert r["collectives"]["all-reduce"]["dcn_count"] == 0


@needs_libtpu
def test_tiny_config_compiles_for_v5p():
  r = aot.check(tiny(), "v5p-8", steps=("train",))
  assert (r["libtpu_topology"], r["chips"], r["hbm_capacity_gib"], r["fits"]) == (
      "v5p:2x2x1",
      4,
      95.0,
      True,
  )


@needs_libtpu
def test_fsdp_shards_parameters_and_optimizer_state():
  # The report's parts are the per-chip shards of the state the train step is compiled with.
  devices = aot.topology_devices("v5e:2x2")
  parts = []
  for fsdp in (1, 4):
    _, _, state, batch, nets = aot._train_args(tiny(fsdp=fsdp), devices)
    parts.append(aot._state_parts(state, batch, nets))
  before, after = parts
  ratio = (before["parameters"] + before["optimizer"]) / (after["parameters"] + after["optimizer"])
  # Kernels whose output width 4 divides are split 4 ways; biases, norms and the 3-channel
  # output head stay whole.
  assert 3.8 < ratio <= 4.0, ratio
  assert after["batch"] == before["batch"]  # the batch is split over every mesh axis either way


@needs_libtpu
def test_two_slices_reduce_gradients_over_dcn():
  """Across slices the gradient sum is a megascale transfer (a host send per tensor group):
  every parameter's float32 gradient crosses, in the TPU's tiled layout (the tiny model's
  8-wide kernels are padded to 128 lanes, hence up to 4x), and nothing within a slice does."""
  r = aot.check(tiny(), "v5e:2x2", num_slices=2, steps=("train",))
  assert (r["chips"], r["num_slices"], r["mesh"]["dcn_data"]) == (8, 2, 2)
  dcn = r["collectives"]["all-reduce"]
  params = r["programs"][0].memory.parts["parameters"]
  assert dcn["dcn_count"] >= 1
  assert params <= dcn["dcn_bytes"] <= 4 * params, (dcn, params)
  single = aot.check(tiny(), "v5e:2x2", steps=("train",))
  assert all(c["dcn_bytes"] == 0 for c in single["collectives"].values())


def test_megascale_sends_count_as_dcn_collectives():
  hlo = "\n".join(
      [
          '  %send.1 = (f32[27,1,128]{2,1,0:T(1,128)}, u32[], token[]) send(%b, %a), channel_id=4,'
          ' is_host_transfer=true, frontend_attributes={_xla_megascale_reduce_operation="SUM",'
          '_xla_megascale_transfer_type="ALL_REDUCE"}',
          '  %recv.1 = (f32[27,1,128]{2,1,0:T(1,128)}, u32[], token[]) recv(%a), channel_id=3,'
          ' is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}',
      ]
  )
  out = aot.collectives(hlo, device_slices=[0, 1])
  n = 27 * 128 * 4
  assert out["all-reduce"] == {"count": 1, "bytes": n, "dcn_count": 1, "dcn_bytes": n}


@needs_libtpu
def test_the_cost_counts_every_microbatch():
  """XLA's cost analysis counts a loop body once (results/pod_fit.md): with gradient
  accumulation the step's FLOPs are the body's times the microbatches, near the model's."""
  result = _aot_cli(
      "--topology=v5e:2x2", "--steps=train", "--memory_only", "--config.optimizer.microbatches=2"
  )
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["microbatches"] == 2
  assert report["step_flops_per_chip"] == pytest.approx(report["model_flops_per_chip"], rel=0.1)


@needs_libtpu
def test_a_config_that_cannot_fit_is_refused_in_one_line():
  result = _aot_cli(
      "--topology=v5e:2x2",
      "--steps=train",
      "--config.data.batch_size=64",
      "--config.data.crop_size=(1024,1024)",
  )
  assert result.returncode == aot.EXIT_DOES_NOT_FIT, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr
  assert errors[0].startswith("error: demo does not fit")
  assert "try model.dtype=bfloat16" in errors[0]
  report = json.loads(result.stdout.strip().splitlines()[-1])  # the row, with the need
  assert not report["fits"] and report["hbm_per_chip_gib"] > report["hbm_capacity_gib"]


def test_unknown_topology_is_a_user_error_before_compiling():
  result = _aot_cli("--topology=v5e-12")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: topology 'v5e-12'")


@needs_libtpu
def test_the_fit_check_traces_the_tpu_kernels_not_the_cpu_formulations():
  from bootvae_jax.core import sharding
  from bootvae_jax.ops import attention as attention_ops
  from bootvae_jax.ops import conv as conv_ops

  config = tiny()
  mesh = sharding.make_mesh(config.mesh, aot.topology_devices("v5e:2x2"))
  with aot._mesh_context(mesh, config.sharding_rules):
    assert (conv_ops.implementation(), attention_ops.implementation()) == ("xla", "jax_nn")
  assert conv_ops.implementation() == "winograd"  # this CPU process, outside the check


@needs_libtpu
def test_memory_only_reads_the_compilers_need_without_a_full_compile():
  """--memory_only: libtpu starts with its HBM capped, every program is refused at memory
  assignment, and the refusal's need is the row (arguments + temporaries, no code)."""
  result = _aot_cli("--topology=v5e:2x2", "--steps=train", "--memory_only")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  memory = report["train_memory_gib"]
  assert report["memory_only"] and report["fits"]
  state = sum(memory[k] for k in ("parameters", "optimizer", "ema", "batch"))
  # Measured: 0.085 GiB (a full compile: 0.175, of which 0.079 is code the need leaves out).
  assert state < report["hbm_per_chip_gib"] < 0.2
  assert memory["code"] == 0 and memory["temporaries"] > 0
  # The cost comes from the optimized module the compiler dumped before refusing it: the
  # full compile's FLOPs and collectives (results/pod_fit.md compares the two).
  assert report["step_flops_per_chip"] == pytest.approx(report["model_flops_per_chip"], rel=0.1)
  assert report["step_bytes_per_chip"] > 0 and report["mfu_bound"] > 0
  all_reduce = report["collectives"]["all-reduce"]
  assert all_reduce["bytes"] >= 0.9 * memory["parameters"] * aot.GIB
  assert "memory only (--memory_only)" in result.stdout
