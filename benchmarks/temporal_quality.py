r"""Temporal quality of several models and inference modes on one folder of held-out videos.

  python benchmarks/temporal_quality.py --data=../shared/data/videos/heldout \
      --model=grown_8x:workdir=/runs/seed0/promag_8x+from_lower \
      --model=odvae:official=odvae,weights=tests/fixtures/odvae/weights.safetensors,model_config=tests/fixtures/odvae/config.json \
      --modes=stream,crossfade,tiled --size=64,64 --num_frames=33 --out=results/temporal_quality

Each (model, mode) runs `python -m bootvae_jax.evaluate` in its own process (a mode the model
cannot run, e.g. exact streaming of a model with a non-causal layer, is reported with the
reason) and its metrics.json is collected: PSNR, per-phase PSNR, flicker, tLP, tOF and the
mode's PSNR gap to one whole-clip pass. Writes <out>.json (every report), <out>.md (one table)
and <out>.png (PSNR by phase of the latent group, one line per row).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_DATA = flags.DEFINE_string("data", None, "Folder of held-out videos.")
_MODELS = flags.DEFINE_multi_string(
    "model",
    [],
    "name:key=value,... with the evaluate CLI's model flags (workdir=, step=, ema=, official=,"
    " weights=, model_config=).",
)
_MODES = flags.DEFINE_list("modes", ["auto"], "Inference modes (evaluate --mode).")
_SIZE = flags.DEFINE_string("size", "64,64", "Frame size H,W.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 33, "Frames per video (1 + r·k).")
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 17, "Frames per chunk for chunked modes.")
_OUT = flags.DEFINE_string("out", "results/temporal_quality", "Output path without suffix.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds per evaluate run.")
_FROM_JSON = flags.DEFINE_list(
    "from_json", [], "Rows of earlier runs' <out>.json files, written first (runs can be split)."
)


def parse_model(spec: str) -> tuple[str, list[str]]:
  name, _, rest = spec.partition(":")
  flags_ = [f"--{kv}" for kv in rest.split(",") if kv]
  return name, flags_


def run_one(name: str, model_flags: list[str], mode: str) -> dict:
  with tempfile.TemporaryDirectory() as out:
    cmd = [
        sys.executable,
        "-m",
        "bootvae_jax.evaluate",
        *model_flags,
        f"--data={_DATA.value}",
        f"--out={out}",
        f"--mode={mode}",
        f"--size={_SIZE.value}",
        f"--num_frames={_NUM_FRAMES.value}",
        f"--chunk_frames={_CHUNK_FRAMES.value}",
        "--norfvd",
        "--worst=0",
        "--noprogress",
    ]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=_TIMEOUT.value)
    path = pathlib.Path(out) / "metrics.json"
    if result.returncode or not path.exists():
      error = (result.stderr.strip().splitlines() or ["no output"])[-1]
      return {"model": name, "mode": mode, "error": error}
    report = json.loads(path.read_text())
    # `mode` is the one that ran (evaluate resolves auto: stream where the model streams exactly).
    return {**report, "model": name, "requested_mode": mode, "source": report["model"]}


def _number(value, digits: int) -> str:
  if isinstance(value, (int, float)):
    return f"{value:.{digits}f}"
  if isinstance(value, dict) and value.get("value") is not None:
    return f"{value['value']:.{digits}f}"
  return "n/a"


def table(rows: list[dict]) -> str:
  lines = [
      "| model | mode | PSNR (dB) | PSNR by phase (dB) | flicker | tLP | tOF | gap to one pass (dB) |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['model']} | {r['mode']} | not run: {r['error']} | | | | | |")
      continue
    overall = r.get("overall", r)
    phases = overall.get("psnr_per_phase")
    phases = (
        " / ".join(f"{v:.2f}" for v in phases) if isinstance(phases, list) else _number(phases, 2)
    )
    lines.append(
        f"| {r['model']} | {r['mode']} | {_number(overall.get('psnr'), 2)} | {phases} |"
        f" {_number(overall.get('flicker'), 4)} | {_number(overall.get('tlp'), 4)} |"
        f" {_number(overall.get('tof'), 3)} | {_number(overall.get('mode_gap'), 2)} |"
    )
  return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4))
  for r in rows:
    phases = r.get("overall", r).get("psnr_per_phase") if "error" not in r else None
    if isinstance(phases, list):
      ax.plot(range(len(phases)), phases, marker="o", label=f"{r['model']} ({r['mode']})")
  ax.set_xlabel("position in the latent group (0 = the first frame alone)")
  ax.set_ylabel("PSNR (dB)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  if not _FROM_JSON.value and (not _DATA.value or not _MODELS.value):
    raise app.UsageError("--data and at least one --model (or --from_json) are required")
  rows = [row for path in _FROM_JSON.value for row in json.loads(pathlib.Path(path).read_text())]
  for spec in _MODELS.value:
    name, model_flags = parse_model(spec)
    for mode in _MODES.value:
      row = run_one(name, model_flags, mode)
      print(json.dumps({k: v for k, v in row.items() if k not in ("per_video", "skipped")}), flush=True)
      rows.append(row)
  pathlib.Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(f"{_OUT.value}.json").write_text(json.dumps(rows, indent=1))
  pathlib.Path(f"{_OUT.value}.md").write_text(table(rows) + "\n")
  plot(rows, f"{_OUT.value}.png")


if __name__ == "__main__":
  app.run(main)
