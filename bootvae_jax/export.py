"""Export a trained model for PyTorch (command line; from Python use `bootvae_jax.export`).

    python -m bootvae_jax.export --workdir=workdirs/promag_8x [--step=N] [--ema] --out=OUT
    python -m bootvae_jax.export --workdir=DIR --out=OUT --format=official   # CV-VAE / OD-VAE

writes OUT/config.json, OUT/model.safetensors and OUT/README.md (a model card); see
`bootvae_jax/interop/exported.py` for the formats and `bootvae_jax/interop/torch_model.py` for
the PyTorch side. Prints one JSON line describing what was written; a user error is one
line on stderr and exit status 2 (`bootvae_jax/cli.py`).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from bootvae_jax import cli
from bootvae_jax.interop.exported import FORMATS
from bootvae_jax.interop.exported import export
from bootvae_jax.models import architectures

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_EMA = flags.DEFINE_bool("ema", False, "Export the EMA parameters.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_FORMAT = flags.DEFINE_enum(
    "format",
    "bootvae_jax",
    FORMATS,
    "bootvae_jax: for interop/torch_model.py; official: the CV-VAE /"
    " OD-VAE names, layouts and constructor kwargs.",
)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bootvae_jax.training import checkpoints  # pylint: disable=import-outside-toplevel

  step = checkpoints.resolve_step(_WORKDIR.value, _STEP.value)
  if _FORMAT.value == "official":  # refused before any weights are loaded
    architectures.official_layout(checkpoints.read_config(_WORKDIR.value, step).model)
  model, config = checkpoints.load_model(_WORKDIR.value, step, ema=_EMA.value)
  source = dict(workdir=_WORKDIR.value, step=step, ema=_EMA.value)
  out = export(model, config.model, _OUT.value, format=_FORMAT.value, source=source)
  print(
      json.dumps(dict(out=str(out), format=_FORMAT.value, files=sorted(os.listdir(out)), **source))
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  cli.run(main)
