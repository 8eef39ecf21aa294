r"""Compiles shipped configs for TPU slices (bootvae_jax/aot.py) and collects one JSON line each.

  python benchmarks/pod_fit.py --configs=promag_4x,odvae --topologies=v5e-16,v5p-8 \
      --out=results/pod_fit.jsonl
  python benchmarks/pod_fit.py --configs=promag_4x --topologies=v5e-16 \
      --levers=none,bf16,bf16+remat --out=results/pod_fit.jsonl    # before / after rows
  python benchmarks/pod_fit.py --configs=promag_4x --topologies=v5e-16,v5e-64,v5e-256 \
      --batch_per_chip=1 --out=results/pod_fit.jsonl                   # weak scaling
  python benchmarks/pod_fit.py --table=results/pod_fit.jsonl > results/pod_fit.md

Each compile runs in its own process (one at a time: a paper-scale TPU compile takes minutes
and gigabytes) with the train step only; the line gets `levers` (the overrides applied) and
the compile's wall time. A config that does not fit still gives its line (exit 3).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bootvae_jax.core import tpu_specs  # pylint: disable=g-import-not-at-top

_CONFIGS = flags.DEFINE_list("configs", [], "Config names under bootvae_jax/configs/.")
_TOPOLOGIES = flags.DEFINE_list("topologies", [], "Slices; empty = each config's target.")
_LEVERS = flags.DEFINE_list("levers", ["shipped"], "Lever sets (see `lever_flags`), one row each.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.x=y for every row.")
_OUT = flags.DEFINE_string("out", "", "Append the JSON lines to this file.")
_TABLE = flags.DEFINE_string("table", "", "Print a markdown table of this JSON-lines file.")
_BATCH_PER_CHIP = flags.DEFINE_integer(
    "batch_per_chip", 0, "Weak scaling: data.batch_size = this x the chips of every slice."
)
_MEMORY_ONLY = flags.DEFINE_bool(
    "memory_only", False, "aot --memory_only: the HBM need only, minutes per paper-scale row."
)
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds per compile.")

# A lever set is "shipped" (the config as it is), "none" (float32, no remat, no FSDP, one
# microbatch), or '+'-joined levers on top of the config: bf16, f32, remat, noremat, fsdpN
# (mesh.fsdp=N), mbN (optimizer.microbatches=N), remat_convs / remat_level (models/remat.py); e.g. "bf16+remat+mb4".
NONE = [
    "--config.model.dtype=float32",
    "--config.model.remat=",
    "--config.mesh.fsdp=1",
    "--config.optimizer.microbatches=1",
]
LEVER_FLAGS = {
    "bf16": ["--config.model.dtype=bfloat16"],
    "f32": ["--config.model.dtype=float32"],
    "remat": ["--config.model.remat=block"],
    "remat_convs": ["--config.model.remat=block_convs"],
    "remat_level": ["--config.model.remat=level"],
    "noremat": ["--config.model.remat="],
}


def lever_flags(levers: str) -> list[str]:
  if levers == "shipped":
    return []
  if levers == "none":
    return NONE
  out = []
  for lever in levers.split("+"):
    if lever in LEVER_FLAGS:
      out += LEVER_FLAGS[lever]
    elif m := re.fullmatch(r"fsdp(\d+)", lever):
      out.append(f"--config.mesh.fsdp={m.group(1)}")
    elif m := re.fullmatch(r"mb(\d+)", lever):
      out.append(f"--config.optimizer.microbatches={m.group(1)}")
    else:
      raise app.UsageError(f"unknown lever {lever!r} in {levers!r}")
  return out


def run_one(config: str, topology: str | None, levers: str) -> dict:
  cmd = [
      sys.executable,
      "-m",
      "bootvae_jax.aot",
      f"--config=bootvae_jax/configs/{config}.py",
      "--steps=train",
      f"--num_slices={_NUM_SLICES.value}",
      *(["--memory_only"] if _MEMORY_ONLY.value else []),
      *([f"--topology={topology}"] if topology else []),
      *lever_flags(levers),
      *_OVERRIDES.value,
  ]
  if _BATCH_PER_CHIP.value:
    chips = tpu_specs.resolve(topology).chips * _NUM_SLICES.value
    cmd.append(f"--config.data.batch_size={_BATCH_PER_CHIP.value * chips}")
  start = time.time()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    error = f"the compile did not finish in {_TIMEOUT.value} s"
    return {"config": config, "topology": topology, "levers": levers, "error": error}
  lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
  if not lines:
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return {"config": config, "topology": topology, "levers": levers, "error": tail}
  row = json.loads(lines[-1])
  row.update(levers=levers, overrides=lever_flags(levers) + _OVERRIDES.value)
  row["compile_s"] = round(time.time() - start, 1)
  return row


def _remat(value) -> str:
  """The remat policy of a row (older rows hold a boolean: True was per res block)."""
  return {True: "block", False: "none", "": "none"}.get(value, value)


def table(path: str) -> str:
  rows = [json.loads(l) for l in open(path) if l.strip()]
  head = (
      "| config | slice | chips | batch | levers | dtype | remat | fsdp | microbatches | params+opt+ema GiB |"
      " temporaries GiB | total GiB / HBM | headroom | fits | roofline step | MFU bound |"
      " collectives MB (DCN) |"
  )
  out = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    if "error" in r:
      out.append(
          f"| {r['config']} | {r['topology']} | | | {r['levers']} | | | | | | |"
          f" {r['error'][:120]} | | {'NO' if 'does not fit' in r['error'] else '?'} | | | |"
      )
      continue
    m = r["train_memory_gib"]
    state = m["parameters"] + m["optimizer"] + m["ema"]
    if r.get("step_bytes_per_chip") is None:  # no cost analysis: the model FLOPs at peak
      roofline, mfu, collectives = f"≥ {1e3 * r['roofline_step_s']:.0f} ms (FLOPs only)", "-", "-"
    else:
      coll = r.get("collectives") or {}
      coll_mb = sum(c["bytes"] for c in coll.values()) / 1e6
      dcn_mb = sum(c["dcn_bytes"] for c in coll.values()) / 1e6
      # Memory-only bytes leave out the tile padding: the time is a lower bound (marked *).
      star = "*" if r.get("memory_only") else ""
      roofline = f"{1e3 * r['roofline_step_s']:.0f} ms{star} ({r['roofline_bound']})"
      mfu, collectives = f"{100 * r['mfu_bound']:.0f}%", f"{coll_mb:.0f} ({dcn_mb:.0f})"
    slices = f"{r['num_slices']} x " if r["num_slices"] > 1 else ""
    short = r["hbm_per_chip_gib"] - r["hbm_capacity_gib"]
    headroom = f"{r['headroom_pct']:.0f}%" if r["fits"] else f"{short:.1f} GiB short"
    out.append(
        f"| {r['config']} | {slices}{r['topology']} | {r['chips']} | {r['global_batch']} |"
        f" {r['levers']} | {r['dtype']} | {_remat(r['remat'])} | {r['mesh'].get('fsdp', 1)} |"
        f" {r.get('microbatches', 1)} | {state:.2f} |"
        f" {m['temporaries']:.2f} | {r['hbm_per_chip_gib']:.2f} / {r['hbm_capacity_gib']:g} |"
        f" {headroom} | {'yes' if r['fits'] else 'NO'} |"
        f" {roofline} | {mfu} | {collectives} |"
    )
  return "\n".join(out)


def main(argv):
  del argv
  if _TABLE.value:
    print(table(_TABLE.value))
    return
  for config in _CONFIGS.value:
    for topology in _TOPOLOGIES.value or [None]:
      for levers in _LEVERS.value:
        row = run_one(config, topology, levers)
        line = json.dumps(row)
        print(line, flush=True)
        if _OUT.value:
          with open(_OUT.value, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
