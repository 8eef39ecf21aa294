"""Paths the command lines are given: local paths or URLs (gs://...), through etils.epath.

No local path is ever made from a URL. Libraries that need a local file (PyAV, safetensors,
matplotlib) write into a local temporary directory, which is copied to the URL once complete
(`local_output_file`, `local_output_dir`), or read a local copy (`local_input_file`). Output
paths are checked before any compute (`check_output_file`, `check_output_dir`), with errors that
name the flag and the path the user gave.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from etils import epath

from bootvae_jax.cli import UserError


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def path(location: str | os.PathLike) -> epath.Path:
  """`location` as an epath.Path: a URL stays a URL, a local path is made absolute."""
  location = os.fspath(location)
  return epath.Path(location if is_url(location) else os.path.abspath(location))


def copy_to(local: str | os.PathLike, target: str | os.PathLike) -> None:
  """Copies the local file `local` to `target` (local or URL), streaming through the target's
  filesystem (epath's own `copy` would pick the local side's filesystem for both)."""
  target = path(target)
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(local, "rb") as source, target.open("wb") as destination:
      shutil.copyfileobj(source, destination, length=16 << 20)
  except Exception as error:  # pylint: disable=broad-except
    if not is_url(target) or isinstance(error, UserError):
      raise
    # A URL's filesystem raises its own errors (TensorFlow's, gcsfs's): no bucket, no access.
    raise UserError(f"{target}: cannot be written ({_first_line(error)})") from error


@contextlib.contextmanager
def local_output_file(target: str | os.PathLike) -> Iterator[str]:
  """A local path to write `target` at: `target` itself when local (the writer makes it
  atomic), else a temporary file copied to the URL when the block ends without error."""
  target = os.fspath(target)
  if not is_url(target):
    yield target
    return
  with tempfile.TemporaryDirectory(prefix="bootvae_jax_out_") as directory:
    local = os.path.join(directory, os.path.basename(target.rstrip("/")) or "output")
    yield local
    copy_to(local, target)


@contextlib.contextmanager
def local_output_dir(target: str | os.PathLike) -> Iterator[str]:
  """A local folder to write the folder `target` in: `target` itself when local, else a
  temporary folder whose files are copied under the URL when the block ends without error."""
  target = os.fspath(target)
  if not is_url(target):
    yield target
    return
  with tempfile.TemporaryDirectory(prefix="bootvae_jax_out_") as directory:
    yield directory
    for root, _, files in os.walk(directory):
      for name in sorted(files):
        local = os.path.join(root, name)
        copy_to(local, path(target) / os.path.relpath(local, directory))


@contextlib.contextmanager
def local_input_file(source: str | os.PathLike) -> Iterator[str]:
  """A local path holding `source`'s bytes: `source` itself when local, else a temporary copy
  of the URL's file."""
  source = os.fspath(source)
  if not is_url(source):
    yield source
    return
  with tempfile.TemporaryDirectory(prefix="bootvae_jax_in_") as directory:
    local = os.path.join(directory, os.path.basename(source.rstrip("/")) or "input")
    try:
      with path(source).open("rb") as remote, open(local, "wb") as copy:
        shutil.copyfileobj(remote, copy, length=16 << 20)
    except Exception as error:  # pylint: disable=broad-except
      raise UserError(f"{source}: cannot be read ({_first_line(error)})") from error
    yield local


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def check_output_file(flag: str, target: str | os.PathLike) -> None:
  """Refuses (`UserError` naming `--flag=target`) an output file path that cannot be written:
  an existing folder, a parent that is a file, an unwritable parent. URLs are checked by
  their write."""
  target = os.fspath(target)
  if is_url(target):
    return
  where = f"--{flag}={target}"
  location = os.path.abspath(target)
  if os.path.isdir(location):
    raise UserError(f"{where} is an existing folder; name a file (e.g. {target}/out.mp4)")
  _check_parent(where, os.path.dirname(location))


def check_output_dir(flag: str, target: str | os.PathLike) -> None:
  """Refuses (`UserError` naming `--flag=target`) an output folder that cannot be made: an
  existing file, a parent that is a file, an unwritable parent."""
  target = os.fspath(target)
  if is_url(target):
    return
  where = f"--{flag}={target}"
  location = os.path.abspath(target)
  if os.path.exists(location) and not os.path.isdir(location):
    raise UserError(f"{where} is an existing file, not a folder")
  if os.path.isdir(location):
    if not os.access(location, os.W_OK):
      raise UserError(f"{where} is not writable")
    return
  _check_parent(where, os.path.dirname(location))


def _check_parent(where: str, parent: str) -> None:
  """The nearest existing ancestor of `parent` must be a writable folder."""
  probe = parent
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UserError(f"{where}: {probe} is a file, not a folder")
  if not os.access(probe, os.W_OK):
    raise UserError(f"{where}: {probe} is not writable")
