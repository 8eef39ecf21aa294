"""`training/preemption.py`: a second Ctrl-C ends the process at once, whatever code runs."""

import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A run between its first and second Ctrl-C: the main thread busy in Python code and in
# garbage-collection callbacks (where a KeyboardInterrupt would be printed and ignored).
SCRIPT = """
import gc, os, signal, sys, time
from bootvae_jax.training import preemption

stop = preemption.StopSignal()
gc.callbacks.append(lambda phase, info: sum(range(2000)))
print("ready", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
  [[i] for i in range(5000)]
  gc.collect()
print("finished:", stop.reason(1), flush=True)
"""


def test_a_second_ctrl_c_ends_the_process_at_once(tmp_path):
  env = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
  proc = subprocess.Popen(
      [sys.executable, "-c", SCRIPT],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  assert proc.stdout.readline().strip() == "ready"
  proc.send_signal(signal.SIGINT)
  # Two signals pending at once are one for Python: the second waits for the first's warning.
  lines = []
  while not any("received SIGINT" in line for line in lines):
    lines.append(proc.stdout.readline())
    assert lines[-1], lines
  time.sleep(0.3)
  start = time.monotonic()
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=30)
  out = "".join(lines) + out
  assert time.monotonic() - start < 10
  assert proc.returncode == -signal.SIGINT, out  # killed by the signal, not exit 0
  assert "finished" not in out
  assert "Exception ignored" not in out and "KeyboardInterrupt" not in out
  assert "second Ctrl-C: stopping at once" in out
