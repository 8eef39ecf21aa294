"""Experiments: scripts that train and compare runs of the framework and write results/."""

from absl import flags


def define_flag(define, name, *args, **kwargs):
  """`define(name, ...)`, or the flag of that name if another CLI module imported into the same
  process (a test session, a notebook) defined it first: absl flags are process-global."""
  if name in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
  return define(name, *args, **kwargs)
