"""Tests for `bootvae_jax.training.trainer`, operating a run: preemption, damaged checkpoints,
other topologies, URLs, divergence.

The scenarios that need the real CLI run it in subprocesses on the demo config shrunk to a
3-level, 8-channel model on 5×16² clips; all of them share one persistent compilation cache
and the suite's unoptimised XLA (tests/conftest.py), so only the first 1×4 run and the 2×2 run
compile.
The rest runs in this process with the compiled programs replaced by fakes (the loop, the
files and the signals are what is under test there, not the numbers).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bootvae_jax import cli
from bootvae_jax import data as data_lib
from bootvae_jax.training import checkpoints as checkpoints_lib
from bootvae_jax.core import sharding
from bootvae_jax.training import train_state as train_state_lib
from bootvae_jax.training import train_step as train_step_lib
from bootvae_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOTAL_STEPS = 12
BATCH = 4  # global batch size of every scenario
CLI_FLAGS = [
    "--config=configs/demo.py",
    f"--config.data.batch_size={BATCH}",
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.log_every=1",
    "--config.eval_every=1000",
    "--config.checkpoint_every=1000",
    "--config.progress_every_seconds=1000",
    "--config.model.base_channels=8",
    "--config.model.num_groups=4",
    "--config.model.channel_multipliers=(1,1,1)",
    "--config.model.encoder.blocks=('3d','3d','3d')",
    "--config.model.encoder.downsample=('conv3d:st','conv3d:st','')",
    "--config.model.decoder.blocks=('3d','3d','3d')",
    "--config.model.decoder.upsample=('','d2s:st','d2s:st')",
    "--config.model.decoder.num_res_blocks=1",
    "--config.data.num_frames=5",
    "--config.data.crop_size=(16,16)",
    "--config.eval.num_clips=1",
]
# Numbers that differ between two runs of the same steps.
TIMING_KEYS = ("steps_per_sec", "uptime")


# ----------------------------------------------------------------------------------------------
# The real CLI in subprocesses.


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      JAX_COMPILATION_CACHE_DIR=str(cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      TF_CPP_MIN_LOG_LEVEL="3",
      XLA_FLAGS="",  # JAX_DISABLE_MOST_OPTIMIZATIONS (tests/conftest.py) is inherited
  )


def _start(args, env, log_path, devices=4):
  if devices:  # one process with `devices` fake CPU devices
    env = dict(
        env, XLA_FLAGS=f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
    )
  with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would block the run
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _main(workdir, *extra):
  return [sys.executable, "-m", "bootvae_jax.main", f"--workdir={workdir}", *CLI_FLAGS, *extra]


def _rows(workdir):
  return [json.loads(l) for l in open(pathlib.Path(workdir) / "metrics.jsonl") if l.strip()]


def _train_rows(workdir):
  return [r for r in _rows(workdir) if "loss" in r]


def _wait_for_rows(proc, workdir, count, timeout=900):
  """Blocks until `count` training rows are in metrics.jsonl (the run is mid-training)."""
  deadline = time.time() + timeout
  path = pathlib.Path(workdir) / "metrics.jsonl"
  while time.time() < deadline:
    assert proc.poll() is None, "the run ended before it was signalled"
    if path.exists() and sum('"loss"' in l for l in open(path)) >= count:
      return
    time.sleep(0.02)
  raise TimeoutError(f"{path} did not reach {count} rows")


def _run(args, env, log_path, devices=4, timeout=900):
  proc = _start(args, env, log_path, devices)
  proc.wait(timeout=timeout)
  return proc.returncode, pathlib.Path(log_path).read_text()


def _steps(workdir):
  return checkpoints_lib.checkpoint_steps(str(workdir))


def _comparable(row):
  return {k: v for k, v in row.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, cli_env):
  """1 process × 4 devices: a run stopped by SIGTERM, its rerun, and an uninterrupted run."""
  base = tmp_path_factory.mktemp("single")
  out = dict(stopped=base / "stopped", straight=base / "straight")
  proc = _start(_main(out["stopped"]), cli_env, base / "stopped.log")
  _wait_for_rows(proc, out["stopped"], 2)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=900)
  out["stopped_rc"] = proc.returncode
  out["stopped_log"] = (base / "stopped.log").read_text()
  out["stopped_steps"] = _steps(out["stopped"])
  out["stopped_data"] = json.loads(
      (
          out["stopped"] / "checkpoints" / str(out["stopped_steps"][-1]) / "data" / "metadata"
      ).read_text()
  )
  out["stopped_rows"] = _train_rows(out["stopped"])
  # What a kill -9 after the checkpoint leaves: rows past it, the last one cut short.
  with open(out["stopped"] / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": out["stopped_steps"][-1] + 1, "loss": 123.0}) + '\n{"step": ')
  out["rerun_rc"], out["rerun_log"] = _run(_main(out["stopped"]), cli_env, base / "rerun.log")
  out["straight_rc"], out["straight_log"] = _run(
      _main(out["straight"]), cli_env, base / "straight.log"
  )
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def multi_process(tmp_path_factory, cli_env):
  """2 processes × 2 devices (launch/local_multiprocess.sh), one of them sent SIGTERM; then
  the same workdir resumed by 1 process × 4 devices."""
  base = tmp_path_factory.mktemp("multi")
  workdir = base / "run"
  env = dict(cli_env, COORDINATOR_PORT=str(_free_port()))
  args = ["bash", "launch/local_multiprocess.sh", "2", "2", f"--workdir={workdir}", *CLI_FLAGS]
  proc = _start(args, env, base / "multi.log", devices=0)
  _wait_for_rows(proc, workdir, 2)
  children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
  assert len(children) == 2
  os.kill(int(children[1]), signal.SIGTERM)  # only process 1 is "preempted"
  proc.wait(timeout=900)
  out = dict(workdir=workdir, rc=proc.returncode, log=(base / "multi.log").read_text())
  out["steps"] = _steps(workdir)
  out["rows"] = _train_rows(workdir)
  out["resume_rc"], out["resume_log"] = _run(_main(workdir), cli_env, base / "resume.log")
  return out


def test_sigterm_saves_the_current_step_and_the_rerun_equals_an_uninterrupted_run(
    single_process,
):
  run = single_process
  assert run["stopped_rc"] == 0, run["stopped_log"][-3000:]
  (stopped,) = run["stopped_steps"]  # only the checkpoint of the step it stopped at
  assert 2 <= stopped < TOTAL_STEPS  # SIGTERM came after 2 logged steps
  assert "received SIGTERM: finishing the current step" in run["stopped_log"]
  assert f"stopping after step {stopped}: received SIGTERM; saved checkpoint {stopped}" in (
      run["stopped_log"]
  )
  assert run["stopped_rows"][-1]["step"] == stopped  # it stopped right after that step
  assert run["stopped_data"] == {
      "examples": stopped * BATCH,
      "batch_size": BATCH,
      "read_failures": 0,
      "clips_per_source": [stopped * BATCH],
  }

  assert run["rerun_rc"] == 0 and run["straight_rc"] == 0, run["rerun_log"][-3000:]
  assert f"step {stopped} (data at example {stopped * BATCH})" in run["rerun_log"]
  assert "dropping 2 rows written after step" in run["rerun_log"]  # the killed run's leftovers
  rerun, straight = _train_rows(run["stopped"]), _train_rows(run["straight"])
  assert [r["step"] for r in rerun] == list(range(1, TOTAL_STEPS + 1))
  assert [_comparable(r) for r in rerun] == [_comparable(r) for r in straight]  # bit-identical
  assert rerun[-1]["data/clips"] == TOTAL_STEPS * BATCH  # the counters continued
  assert rerun[-1]["nonfinite_streak"] == 0.0 and rerun[-1]["skipped_updates"] == 0.0
  # And the final states: parameters, EMA, optimizer state, bit for bit.
  final, expected = (_saved_arrays(run[k], TOTAL_STEPS) for k in ("stopped", "straight"))
  assert final.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(final[key], value, err_msg=key)


def test_several_processes_stop_at_one_step_and_resume_on_another_topology(
    multi_process, single_process
):
  run = multi_process
  assert run["rc"] == 0, run["log"][-3000:]
  stops = re.findall(r"stopping after step (\d+): a preemption notice", run["log"])
  assert len(stops) == 2 and len(set(stops)) == 1, stops  # both processes, one step
  stopped = int(stops[0])
  assert run["steps"] == [stopped] and run["rows"][-1]["step"] == stopped
  step_dir = run["workdir"] / "checkpoints" / str(stopped)
  # Both processes wrote their shards; the data position is one global number.
  assert {p.name for p in (step_dir / "state").glob("ocdbt.process_*")} == {
      "ocdbt.process_0",
      "ocdbt.process_1",
  }
  assert sorted(p.name for p in (step_dir / "data").iterdir()) == [
      "commit_success.txt",
      "metadata",
  ]
  assert json.loads((step_dir / "data" / "metadata").read_text())["examples"] == stopped * BATCH

  # 1 process × 4 devices continues it (the error was `data/process_0-of-1.json does not
  # exist`). Global batches hold the same examples on 2×2 and 1×4, so every step's loss is
  # the uninterrupted 1×4 run's up to the reduction order (the CPU convs' blocked d/dkernel
  # sums in another order per layout: KL 2.1e-5 apart at step 10); a repeated or skipped batch
  # would change it by >1e-3.
  assert run["resume_rc"] == 0, run["resume_log"][-3000:]
  assert f"step {stopped} (data at example {stopped * BATCH})" in run["resume_log"]
  resumed, straight = _train_rows(run["workdir"]), _train_rows(single_process["straight"])
  assert [r["step"] for r in resumed] == list(range(1, TOTAL_STEPS + 1))
  for got, expected in zip(resumed, straight):
    for key in ("loss", "l2", "kl", "data/clips"):
      assert got[key] == pytest.approx(expected[key], rel=1e-4), (got["step"], key)


def _flat(tree) -> dict[str, np.ndarray]:
  """'/'-joined path → host array, for a TrainState or orbax's nested dicts alike."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    out[re.sub(r"/value$", "", key)] = np.asarray(leaf)
  return out


def _saved_arrays(workdir, step) -> dict[str, np.ndarray]:
  """Every array of a checkpoint's state as stored (host numpy, no mesh involved)."""
  state_dir = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return _flat(
      checkpointer.restore(
          state_dir, args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args)
      )
  )


def _restore_on(workdir, step, mesh_config, devices):
  """(state, next batch) of `workdir`'s checkpoint `step` restored on a mesh of `devices`."""
  config = checkpoints_lib.read_config(str(workdir), step)
  config.mesh.update(mesh_config)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  setup, abstract = train_state_lib.create_train_state(config, mesh, abstract=True)
  batches = data_lib.make_train_batches(config.data, mesh=mesh, seed=config.seed)
  state = checkpoints_lib.Checkpoints(str(workdir)).restore(
      step, abstract, setup.state_shardings, batches=batches
  )
  batch = np.asarray(next(batches)["video"])
  batches.close()
  return state, batch


def test_checkpoints_restore_bit_identically_on_other_topologies(multi_process, single_process):
  """2×2 → 1×4, 2×2 → 1×4 with another mesh (fsdp shards some kernels), 2×2 → 1×1 and
  1×4 → 1×1: every array of the state (parameters, EMA, optimizer moments, counters) equals
  the stored one bit for bit, and the next batch is global batch `step` of the stream."""
  devices = jax.devices()
  cases = [
      (multi_process["workdir"], dict(data=-1, fsdp=1), devices),
      (multi_process["workdir"], dict(data=2, fsdp=2), devices),
      (multi_process["workdir"], dict(data=-1, fsdp=1), devices[:1]),
      (single_process["stopped"], dict(data=-1, fsdp=1), devices[:1]),
  ]
  for workdir, mesh_config, mesh_devices in cases:
    step = int(checkpoints_lib.checkpoint_steps(str(workdir))[0])
    saved = _saved_arrays(workdir, step)
    state, batch = _restore_on(workdir, step, mesh_config, mesh_devices)
    restored = _flat(state)
    assert restored.keys() == saved.keys() and len(saved) > 100
    assert any(k.startswith("opt_state") for k in saved)
    for key, value in saved.items():
      np.testing.assert_array_equal(restored[key], value, err_msg=f"{workdir} {key}")
    if mesh_config["fsdp"] == 2:  # the new layout really splits arrays the old one did not
      assert any("fsdp" in leaf.sharding.spec for leaf in jax.tree.leaves(state))

    config = checkpoints_lib.read_config(str(workdir), step)
    reference = data_lib.make_train_batches(
        config.data, mesh=sharding.make_mesh(config.mesh, devices[:1]), seed=config.seed
    )
    for _ in range(step):
      next(reference)
    np.testing.assert_array_equal(batch, np.asarray(next(reference)["video"]))
    reference.close()


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints (real orbax files, no training).


@pytest.fixture
def two_checkpoints(config, tmp_path):
  """A workdir with checkpoints 1 and 2 of the tiny config's state (random values, so the
  arrays are real data files; no compute)."""
  mesh = sharding.make_mesh(config.mesh)
  setup, abstract = train_state_lib.create_train_state(config, mesh, abstract=True)
  rng = np.random.default_rng(0)
  workdir = tmp_path / "run"
  ckpts = checkpoints_lib.Checkpoints(str(workdir), async_save=False)
  for step in (1, 2):
    values = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract)
    ckpts.save(step, values.replace(step=np.int32(step)), config=config)
  ckpts.close()
  return workdir, setup, abstract


def _truncate_largest_data_file(step_dir):
  data_file = max((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
  with open(data_file, "r+b") as f:
    f.truncate(data_file.stat().st_size // 2)


DAMAGE = {
    "truncated data file": (_truncate_largest_data_file, "OUT_OF_RANGE"),
    "deleted state/_METADATA": (
        lambda d: (d / "state" / "_METADATA").unlink(),
        "state/_METADATA is missing",
    ),
    "missing commit marker": (
        lambda d: (d / "commit_success.txt").unlink(),
        "no commit marker",
    ),
}


def test_a_damaged_newest_checkpoint_is_reported_in_one_line_and_the_older_one_restored(
    two_checkpoints, caplog, capfd
):
  workdir, setup, abstract = two_checkpoints
  for name, (damage, reason) in DAMAGE.items():
    copy = workdir.parent / name.replace(" ", "_")
    shutil.copytree(workdir, copy)
    damage(copy / "checkpoints" / "2")
    caplog.clear()
    ckpts = checkpoints_lib.Checkpoints(str(copy))
    step, state = ckpts.restore_latest(abstract, setup.state_shardings)
    assert step == 1, name
    assert float(np.asarray(state.step)) == 1.0  # the older checkpoint's values
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    damaged = [w for w in warnings if "is damaged" in w]
    assert len(damaged) == 1 and str(copy / "checkpoints" / "2") in damaged[0], warnings
    assert reason in damaged[0] and "\n" not in damaged[0], damaged[0]
    # Set aside, so that the run can write step 2 again.
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["1", "2.damaged"]
    ckpts.close()
  assert "Traceback" not in capfd.readouterr().err

  # Nothing intact: one error naming every step and its reason.
  DAMAGE["deleted state/_METADATA"][0](workdir / "checkpoints" / "2")
  (workdir / "checkpoints" / "1" / "commit_success.txt").unlink()
  with pytest.raises(
      checkpoints_lib.DamagedCheckpointsError,
      match=r"no intact checkpoint in .*step 2: state/_METADATA is missing; step 1: no commit",
  ):
    checkpoints_lib.Checkpoints(str(workdir)).restore_latest(abstract, setup.state_shardings)


# ----------------------------------------------------------------------------------------------
# The training loop with fake compute: signals, divergence, URL workdirs.


class _FakeCheckpoints:
  """Records saves instead of writing orbax files (which would need a real gs:// bucket)."""

  instances = []

  def __init__(self, workdir, *, keep=3, async_save=True):
    self.workdir = workdir
    self.directory = checkpoints_lib.checkpoint_dir(workdir)
    self.saved = []  # (step, data position)
    _FakeCheckpoints.instances.append(self)

  def save(self, step, state, *, batches=None, config=None, meta=None, force=False):
    self.saved.append((step, batches.state()["examples"]))

  def wait(self):
    pass

  def close(self):
    pass


class _FakeWriter:
  logdirs = []

  def __init__(self, logdir, just_logging=False):
    _FakeWriter.logdirs.append(logdir)

  def write_scalars(self, step, scalars):
    pass

  def write_images(self, step, images):
    pass

  def flush(self):
    pass


@pytest.fixture
def fake_compute(monkeypatch):
  """Trainer whose state is abstract and whose step / eval / checkpoints / TensorBoard are
  fakes; returns `script`: per-step (nonfinite_streak, callback) the fake step reports."""
  script = []
  monkeypatch.setattr(_FakeCheckpoints, "instances", [])
  monkeypatch.setattr(_FakeWriter, "logdirs", [])
  create = train_state_lib.create_train_state
  monkeypatch.setattr(
      train_state_lib,
      "create_train_state",
      lambda config, mesh, abstract=False: create(config, mesh, abstract=True),
  )

  def jit_train_step(setup, nets):
    def step(state, batch, nets):
      streak, callback = script.pop(0) if script else (0, None)
      if callback is not None:
        callback()
      metrics = dict(loss=np.float32(0.5), skipped_updates=np.float32(streak))
      return state, dict(metrics, nonfinite_streak=np.float32(streak))

    return step

  def jit_eval_step(setup, nets=None):
    return lambda params, frozen, clips, nets: (clips, {"psnr": np.zeros(len(clips))})

  monkeypatch.setattr(train_step_lib, "jit_train_step", jit_train_step)
  monkeypatch.setattr(train_step_lib, "jit_eval_step", jit_eval_step)
  monkeypatch.setattr(checkpoints_lib, "Checkpoints", _FakeCheckpoints)
  monkeypatch.setattr(trainer.metric_writers, "create_default_writer", _FakeWriter)
  return script


def test_divergence_stops_without_replacing_the_last_good_checkpoint(
    fake_compute, config, tmp_path
):
  config.total_steps, config.checkpoint_every, config.max_consecutive_nonfinite = 10, 1, 3
  fake_compute.extend([(0, None), (0, None), (1, None), (2, None), (3, None), (4, None)])
  with pytest.raises(
      trainer.TrainingDiverged, match=r"training diverged: .*steps 3-5 \(3 in a row"
  ) as error:
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert isinstance(error.value, cli.UserError)  # the CLI: one line on stderr, exit 2
  (ckpts,) = _FakeCheckpoints.instances
  assert [step for step, _ in ckpts.saved] == [1, 2]  # none during or after the streak

  # A streak that ends: the periodic checkpoint waits for the first finite update.
  config.checkpoint_every, config.max_consecutive_nonfinite, config.total_steps = 2, 20, 4
  fake_compute[:] = [(0, None), (1, None), (0, None), (0, None)]
  trainer.train_and_evaluate(config, str(tmp_path / "run2"))
  assert [step for step, _ in _FakeCheckpoints.instances[-1].saved] == [3, 4]


def test_a_run_that_ends_inside_a_short_streak_fails_without_a_final_checkpoint(
    fake_compute, config, tmp_path
):
  """Shorter than max_consecutive_nonfinite, but the last step's update was non-finite: the
  final checkpoint would be the diverged state, so the run fails and keeps the last good one."""
  config.total_steps, config.checkpoint_every, config.max_consecutive_nonfinite = 5, 2, 20
  fake_compute.extend([(0, None), (0, None), (0, None), (1, None), (2, None)])
  with pytest.raises(
      trainer.TrainingDiverged, match=r"training ended diverged: the last 2 .*steps 4-5"
  ):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  (ckpts,) = _FakeCheckpoints.instances
  assert [step for step, _ in ckpts.saved] == [2]  # step 4's waited; no final one


def test_a_skipped_training_video_is_warned_once(fake_compute, config, tmp_path, caplog):
  """The training and the evaluation index read the same folder: one warning per file."""
  from bootvae_jax.core import video_io  # pylint: disable=g-import-not-at-top

  folder = tmp_path / "videos"
  folder.mkdir()
  frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), np.uint8)
  video_io.write_video(str(folder / "good.mp4"), frames, fps=8)
  (folder / "empty.mp4").write_bytes(b"")
  config.data.source, config.data.path = "video_folder", str(folder)
  config.data.index_cache_dir = str(tmp_path / "index")
  config.total_steps, config.eval.num_clips = 1, 1
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  warnings = [r.getMessage() for r in caplog.records if "empty.mp4" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("skipping "), warnings


def test_sigint_saves_the_current_step_and_returns(fake_compute, config, tmp_path):
  config.total_steps, config.checkpoint_every = 10, 1000
  interrupt = lambda: os.kill(os.getpid(), signal.SIGINT)  # arrives during step 3
  fake_compute.extend([(0, None), (0, None), (0, interrupt)])
  before = signal.getsignal(signal.SIGINT)
  state = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert state is not None
  (ckpts,) = _FakeCheckpoints.instances
  assert ckpts.saved == [(3, 3 * config.data.batch_size)]  # that step, data position included
  assert signal.getsignal(signal.SIGINT) is before  # handlers put back


def test_a_url_workdir_is_never_turned_into_a_local_path(
    fake_compute, fake_gcs, config, tmp_path, monkeypatch
):
  """gs://bucket/run on a fake gs:// filesystem: every file lands in the bucket, every
  writer gets the URL itself, and no local `gs:` folder appears."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  config.total_steps, config.eval_every, config.checkpoint_every = 2, 2, 1
  trainer.train_and_evaluate(config, "gs://bucket/run")

  run = fake_gcs.root / "bucket" / "run"
  assert [json.loads(l)["step"] for l in open(run / "metrics.jsonl")] == [2, 2]  # train, eval
  assert (run / "eval" / "step_0000002.png").stat().st_size > 0
  assert _FakeWriter.logdirs == ["gs://bucket/run"]  # clu/TensorFlow open URLs themselves
  assert _FakeCheckpoints.instances[0].directory == "gs://bucket/run/checkpoints"
  assert "gs://bucket/run/metrics.jsonl" in fake_gcs.seen
  assert not [p for p in fake_gcs.seen if "gs:/" in p and not p.startswith("gs://")]
  assert not list(tmp_path.rglob("gs:*"))  # no ./gs:/bucket/run
