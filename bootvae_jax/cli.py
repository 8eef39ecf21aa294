"""What every bootvae_jax command line shares: a user error is one line, a bug a traceback.

    if __name__ == "__main__":
      cli.run(main)        # instead of absl's app.run(main)

A *user error* is an input the user can fix: a flag absl refuses, an unknown `--config.x`
override, a config field `validate` refuses, missing data or weights, a workdir that cannot
be written. `run` prints it as ONE line on stderr, `error: <what is wrong and what to do>`,
and exits with status 2; `--verbose` prints the traceback above that line. Anything else is a
bug and keeps Python's traceback (status 1).

The user errors, in this one place (`USER_ERRORS`): `UserError`, raised where an input is
checked (config validation, data sources, the loaders of workdirs and released weights);
absl's flag errors and `app.UsageError`; and the OS errors that name a path the user gave
(no such file, permission denied, not a directory, ...).

This module is imported by library code (for `UserError`), so it stays light: absl and the
standard library only, and it defines its `--verbose` flag only when `run` is called.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
import sys
import traceback
from typing import Any, Callable, Iterable

from absl import app
from absl import flags
from absl import logging as absl_logging

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """An input the user can fix (a config field, a flag, a path, a file's contents).

  The message names the input and says what to do; command lines print it as one line
  (`run`). A ValueError, so callers catching ValueError keep working.
  """


USER_ERRORS = (
    UserError,
    flags.Error,
    app.UsageError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def define_flag(define, name, *args, **kwargs):
  """`define(name, ...)`, or the flag of that name if another command-line module imported into
  the same process (a test session, a notebook) defined it first: absl flags are process-global."""
  if name in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
  return define(name, *args, **kwargs)


def closest(name: str, choices: Iterable[str]) -> str | None:
  """The choice most similar to `name` (difflib, similarity >= 0.6), or None: for "did you
  mean" hints on misspelled names."""
  close = difflib.get_close_matches(name, list(choices), n=1)
  return close[0] if close else None


def one_line(message: str) -> str:
  """A (possibly multi-line, indented) message as one line: 'a:\\n  b\\n  c' -> 'a: b; c'."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  out = lines[0] if lines else ""
  for line in lines[1:]:
    out += (" " if out.endswith(":") else "; ") + line
  return out


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` with the user-error rule of this module's docstring, and without
  the INFO chatter of libraries (`_QuietLibraries`)."""
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "On a user error, also print its traceback.")
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  app.run(functools.partial(_run_main, main), flags_parser=_parse_flags)


class _QuietLibraries(logging.Filter):
  """Drops INFO records of orbax (several per checkpoint save or restore) and of JAX's
  backend probing ("Unable to initialize backend 'tpu'") so that progress lines, warnings and
  errors stay readable."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (
        record.levelno >= logging.WARNING
        or "/orbax/" not in record.pathname
        and record.name != "jax._src.xla_bridge"
    )


def _run_main(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
  try:
    return main(argv)
  except USER_ERRORS as error:
    _exit(error, verbose=flags.FLAGS.verbose)


def _exit(error: BaseException, *, verbose: bool) -> None:
  if verbose:
    traceback.print_exception(error, file=sys.stderr)
  message = one_line(str(error)) or type(error).__name__
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _verbose_in(argv: list[str]) -> bool:
  """--verbose on a command line whose parsing failed (FLAGS.verbose may be unset)."""
  return any(re.fullmatch(r"--?verbose(=(true|t|1|yes|y))?", a, re.IGNORECASE) for a in argv)


# ----------------------------------------------------------------------------------------------
# Flag parsing: absl's errors, and the two config-flag errors ml_collections leaves raw.


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    args = flags.FLAGS(argv)
    message = _config_file_error(argv)
  except Exception as error:  # pylint: disable=broad-except
    message = _parse_error_message(error, argv)
    if message is None:
      raise  # a bug (or a bug in a config file): keep the traceback
    if _verbose_in(argv):
      traceback.print_exc()
    _exit(UserError(message), verbose=False)
  if message is not None:
    _exit(UserError(message), verbose=False)
  return args


def _config_flags() -> list[tuple[str, flags.Flag]]:
  return [
      (name, flags.FLAGS[name])
      for name in list(flags.FLAGS)
      if flags.FLAGS[name].parser.flag_type() == "config object"
  ]


def _config_file_error(argv: list[str]) -> str | None:
  """A config file that did not load: ml_collections defers that error to the first use of
  the config (a multi-line OSError, possibly after expensive set-up)."""
  import ml_collections  # pylint: disable=g-import-not-at-top  (only CLIs with config flags)

  for name, flag in _config_flags():
    if flag.value is None or isinstance(flag.value, ml_collections.ConfigDict):
      continue
    try:
      flag.value.keys()
    except OSError as error:
      return _config_file_message(name, _flag_argument(argv, name), error)
  return None


def _config_file_message(name: str, path: str | None, error: BaseException) -> str:
  reason = str(error).strip().splitlines()[-1].strip()  # e.g. "[Errno 2] No such file ..."
  return f"--{name}={path}: cannot load this config file ({reason})"


def _parse_error_message(error: BaseException, argv: list[str]) -> str | None:
  """The one-line message of an error raised while parsing `argv`, or None for a bug."""
  if isinstance(error, USER_ERRORS):
    return str(error)
  if isinstance(error, (AttributeError, KeyError)):
    return _unknown_override(argv)
  if isinstance(error, OSError):  # a config file that did not load, then overridden
    for name, _ in _config_flags():
      if (path := _flag_argument(argv, name)) is not None:
        return _config_file_message(name, path, error)
  return None


def _flag_argument(argv: list[str], name: str) -> str | None:
  """The value of --name on `argv` (`--name=v` or `--name v`), or None."""
  for i, arg in enumerate(argv):
    if re.fullmatch(rf"--?{re.escape(name)}", arg) and i + 1 < len(argv):
      return argv[i + 1]
    if match := re.fullmatch(rf"--?{re.escape(name)}=(.*)", arg):
      return match.group(1)
  return None


def _unknown_override(argv: list[str]) -> str | None:
  """'--config.x.y=v: config.x has no field 'y'; did you mean ...' for the first override of
  a config flag whose path its config lacks; None if every override names a field."""
  for name, flag in _config_flags():
    source = _flag_argument(argv, name)
    overrides = [
        (match.group(1), arg)
        for arg in argv
        if (match := re.fullmatch(rf"--?(?:no)?{re.escape(name)}\.([^=]+)(?:=.*)?", arg))
    ]
    if source is None or not overrides:
      continue
    try:
      config = flag.parser.parse(source)  # the file again, as the flag loaded it
    except Exception:  # pylint: disable=broad-except
      continue
    for path, arg in overrides:
      if (message := _missing_field(config, name, path)) is not None:
        return f"{arg}: {message}"
  return None


def _missing_field(config: Any, name: str, path: str) -> str | None:
  node, where = config, name
  for key in path.split("."):
    if not hasattr(node, "keys") or "[" in key:
      return None  # a list index or a leaf's attribute: not ours to judge
    if key not in node.keys():
      fields = sorted(node.keys())
      close = closest(key, fields)
      hint = f"did you mean {where}.{close}?" if close else f"its fields: {', '.join(fields)}"
      return f"{where} has no field {key!r}; {hint}"
    node, where = node[key], f"{where}.{key}"
  return None
