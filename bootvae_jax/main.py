r"""Trains a video tokenizer.

  python -m bootvae_jax.main --config=configs/demo.py --workdir=/tmp/demo \
      --config.total_steps=20

Rerunning the same command resumes from the latest checkpoint in --workdir. On a multi-host
pod every host runs the same command (see launch/). A user error (a flag, a config field, an
unknown override, missing data, a workdir that cannot be written) is one line on stderr and
exit status 2, found before any compute (`bootvae_jax/cli.py`; --verbose adds the traceback).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from bootvae_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and PNGs go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (multi-process runs). On TPU pods and SLURM the"
    " cluster is detected; elsewhere pass --coordinator, --num_processes and --process_id.",
)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # after flag parsing, so XLA_FLAGS set by launchers take effect

  if _DISTRIBUTED.value:
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
  from bootvae_jax.training import config as config_lib

  # Before the trainer's heavy imports (TensorFlow, via clu): a bad config fails in seconds.
  config_lib.validate(_CONFIG.value, _WORKDIR.value)
  logging.info(
      "JAX process %d/%d, %d local devices",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
  )
  from bootvae_jax.training import trainer

  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
