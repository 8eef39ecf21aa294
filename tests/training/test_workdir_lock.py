"""`training/workdir_lock.py`: one run per workdir, a dead holder never leaves it stuck."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bootvae_jax import cli
from bootvae_jax.training import workdir_lock


def _holder(path):
  return json.loads((path / workdir_lock.LOCK_NAME).read_text())


def test_a_second_run_is_refused_naming_the_holder_and_the_lock_goes_with_the_run(tmp_path):
  first = workdir_lock.WorkdirLock(tmp_path / "run")
  with first:
    holder = _holder(tmp_path / "run")
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(workdir_lock.WorkdirLocked) as error:
      workdir_lock.WorkdirLock(tmp_path / "run").acquire()
    assert isinstance(error.value, cli.UserError)  # one line, exit 2
    message = str(error.value)
    assert message.startswith(f"--workdir={tmp_path / 'run'} is in use by another run: host")
    assert f"pid {os.getpid()}, started {holder['started']}" in message
  assert not (tmp_path / "run" / workdir_lock.LOCK_NAME).exists()
  with workdir_lock.WorkdirLock(tmp_path / "run"):  # free again
    pass


def test_a_killed_holder_on_this_host_leaves_a_stale_lock_that_is_taken_over(tmp_path, caplog):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock_file = tmp_path / workdir_lock.LOCK_NAME
    lock_file.write_text(
        json.dumps(dict(host=socket.gethostname(), pid=sleeper.pid, started="then", heartbeat=0.0))
    )
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {sleeper.pid}, started then"):
      workdir_lock.WorkdirLock(tmp_path).acquire()  # alive, whatever its heartbeat
  finally:
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
  with workdir_lock.WorkdirLock(tmp_path):
    assert _holder(tmp_path)["pid"] != sleeper.pid
  assert any(
      f"process {sleeper.pid} no longer runs on this host" in r.getMessage() for r in caplog.records
  )


def test_another_hosts_lock_is_stale_once_its_heartbeat_is_old(tmp_path):
  lock_file = tmp_path / workdir_lock.LOCK_NAME
  other = dict(host="other-host", pid=1, started="then", heartbeat=time.time() - 60)
  lock_file.write_text(json.dumps(other))
  with pytest.raises(workdir_lock.WorkdirLocked, match="host other-host, pid 1, started then"):
    workdir_lock.WorkdirLock(tmp_path, stale_seconds=120).acquire()
  with workdir_lock.WorkdirLock(tmp_path, stale_seconds=30):
    assert _holder(tmp_path)["host"] == socket.gethostname()


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  with workdir_lock.WorkdirLock(tmp_path, heartbeat_seconds=0.05):
    first = _holder(tmp_path)["heartbeat"]
    time.sleep(0.5)
    assert _holder(tmp_path)["heartbeat"] > first


def test_a_url_workdir_is_locked_through_epath(fake_gcs):
  with workdir_lock.WorkdirLock("gs://bucket/run"):
    assert _holder(fake_gcs.root / "bucket" / "run")["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLocked):
      workdir_lock.WorkdirLock("gs://bucket/run").acquire()
  assert not (fake_gcs.root / "bucket" / "run" / workdir_lock.LOCK_NAME).exists()
  assert "gs://bucket/run/lock.json" in fake_gcs.seen
