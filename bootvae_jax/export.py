"""Export a model for PyTorch (command line; from Python use `bootvae_jax.export`).

    python -m bootvae_jax.export --workdir=workdirs/promag_8x [--step=N] [--ema] --out=OUT
    python -m bootvae_jax.export --workdir=DIR --out=OUT --format=official   # CV-VAE / OD-VAE
    python -m bootvae_jax.export --official=odvae --weights=W --model_config=C --out=OUT

names the model with every command line's flags (`loading.define_model_flags`) and writes
OUT/config.json, OUT/model.safetensors and OUT/README.md (a model card); see
`bootvae_jax/interop/exported.py` for the formats and `bootvae_jax/interop/torch_model.py` for
the PyTorch side. Prints one JSON line describing what was written; a user error is one
line on stderr and exit status 2 (`bootvae_jax/cli.py`).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags

from bootvae_jax import cli
from bootvae_jax import loading
from bootvae_jax.core import filesystem
from bootvae_jax.interop.exported import FORMATS
from bootvae_jax.interop.exported import export
from bootvae_jax.models import architectures

loading.define_model_flags()  # --workdir [--step, --ema] or --official, --weights, --model_config
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
  args = flags.FLAGS
  filesystem.check_output_dir("out", _OUT.value)  # before any weights are loaded
  if _FORMAT.value == "official" and args.workdir:  # refused before any weights are loaded
    _, config = loading.read_intact(
        args.workdir, args.step, lambda s: loading.read_config(args.workdir, s)
    )
    architectures.official_layout(config.model)
  loaded = loading.load_from_flags(args)
  source = loaded.source
  out = export(loaded.model, loaded.model_config, _OUT.value, format=_FORMAT.value, source=source)
  print(
      json.dumps(
          dict(
              out=_OUT.value if filesystem.is_url(_OUT.value) else str(out),
              format=_FORMAT.value,
              files=sorted(p.name for p in filesystem.path(out).iterdir()),
              **source,
          )
      )
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["out"])
  cli.run(main)
