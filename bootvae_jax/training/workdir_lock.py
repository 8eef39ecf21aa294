"""One run per workdir: `<workdir>/lock.json` names the run that holds it.

    with WorkdirLock(workdir):      # raises WorkdirLocked naming the holder (host, pid, start)
      ...                           # train

The file holds the holder's host, pid, process start time, start time and a heartbeat (a
timestamp the holder rewrites every `heartbeat_seconds` from a daemon thread). A lock is
stale, and taken over with a warning, when
  * its holder ran on this host and that process is gone (a `kill -9`, a crash, a reboot: the
    pid no longer runs, or now belongs to a process started at another time), or
  * its holder ran on another host and its heartbeat is older than `stale_seconds` (that host
    cannot be asked whether the process lives).

Creating the file is create-if-absent: locally `O_CREAT | O_EXCL`, atomic. On a URL (gs://)
etils.epath has no such operation: the file is written when absent and read back after a
moment, and only the run whose token is there holds the lock (object stores read back what
was last written, so of two runs starting within that moment one sees the other's token).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from absl import logging
from etils import epath

from bootvae_jax.cli import UserError

LOCK_NAME = "lock.json"


class WorkdirLocked(UserError):
  """Another live run holds the workdir (command lines: one line, exit 2)."""


def _process_start(pid: int) -> str | None:
  """When process `pid` started (Linux /proc: clock ticks since boot), to tell a pid reused
  after a reboot or a kill from the holder's own; None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_runs(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """The lock of one workdir (local path or URL); `acquire` / `release` or a `with` block."""

  def __init__(
      self,
      workdir: str | os.PathLike,
      *,
      heartbeat_seconds: float = 60.0,
      stale_seconds: float = 600.0,
  ):
    self.workdir = os.fspath(workdir)
    self.path = epath.Path(self.workdir) / LOCK_NAME
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self.remote = "://" in self.workdir
    self._holder: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  # ---------------------------------------------------------------------------------------------

  def acquire(self) -> None:
    """Takes the lock, or raises `WorkdirLocked` naming the live holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    now = time.time()
    holder = dict(
        host=socket.gethostname(),
        pid=pid,
        process_start=_process_start(pid),
        started=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        heartbeat=now,
        token=uuid.uuid4().hex,
    )
    for _ in range(3):  # a stale lock removed, then created: another run may win that race
      if self._create(holder):
        self._holder = holder
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()
        return
      other = self._read()
      if other is None:  # removed (or being written) meanwhile: try again
        time.sleep(0.2)
        continue
      reason = self.stale_reason(other)
      if reason is None:
        raise WorkdirLocked(
            f"--workdir={self.workdir} is in use by another run: host {other.get('host')},"
            f" pid {other.get('pid')}, started {other.get('started')} (lock {self.path}). Wait"
            " for it to end or stop it; a lock whose run died is taken over by the next run"
            f" (same host: at once; another host: {self.stale_seconds / 60:g} minutes after"
            " its last heartbeat)."
        )
      logging.warning(
          "taking over the stale lock %s of host %s, pid %s (started %s): %s",
          self.path,
          other.get("host"),
          other.get("pid"),
          other.get("started"),
          reason,
      )
      self.path.unlink(missing_ok=True)
    raise WorkdirLocked(f"--workdir={self.workdir}: could not take the lock {self.path}")

  def stale_reason(self, holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why `holder`'s lock is stale, or None while its run may be alive."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname():
      pid = int(holder.get("pid", -1))
      if not _pid_runs(pid):
        return f"process {pid} no longer runs on this host"
      start = holder.get("process_start")
      if start is not None and _process_start(pid) not in (None, start):
        return f"pid {pid} now belongs to another process"
      return None
    age = now - float(holder.get("heartbeat", 0.0))
    if age > self.stale_seconds:
      return f"its last heartbeat is {age / 60:.0f} minutes old"
    return None

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still this run's."""
    if self._holder is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    current = self._read()
    if current is not None and current.get("token") == self._holder["token"]:
      self.path.unlink(missing_ok=True)
    self._holder = None

  # ---------------------------------------------------------------------------------------------

  def _create(self, holder: dict[str, Any]) -> bool:
    text = json.dumps(holder)
    if not self.remote:
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if self.path.exists():
      return False
    self.path.write_text(text)
    time.sleep(1.0)  # another run's write in this moment wins over ours, or ours over it
    current = self._read()
    return current is not None and current.get("token") == holder["token"]

  def _read(self) -> dict[str, Any] | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # being written: an empty or partial file
      return None

  def _write(self, holder: dict[str, Any]) -> None:
    if self.remote:
      self.path.write_text(json.dumps(holder))
      return
    temporary = self.path.parent / f".{LOCK_NAME}.{holder['token']}"
    temporary.write_text(json.dumps(holder))
    temporary.replace(self.path)

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      holder = self._holder
      if holder is None:
        return
      try:
        current = self._read()
        if current is None or current.get("token") != holder["token"]:
          logging.error(
              "%s no longer holds this run's token (taken over as stale?); another run may"
              " write into %s",
              self.path,
              self.workdir,
          )
          return
        self._write(dict(holder, heartbeat=time.time()))
      except OSError as error:  # a network hiccup: the next beat tries again
        logging.warning("could not refresh %s: %s", self.path, error)
