"""Per-chip TPU figures and the slice names people use ("v5e-16") mapped to libtpu topologies.

The figures are Google's published per-chip numbers (sources in the comments). They are what
the ahead-of-time fit check (`bootvae_jax/aot.py`) divides by: HBM capacity for "does it fit",
peak bf16 FLOP/s and HBM bandwidth for the roofline step time.
"""

from __future__ import annotations

import dataclasses
import re

from bootvae_jax.cli import UserError

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  generation: str  # the prefix of libtpu topology strings ("v5e" in "v5e:4x4")
  hbm_gib: float  # HBM per chip
  bf16_tflops: float  # peak dense bf16 per chip
  hbm_gbps: float  # HBM bandwidth per chip, GB/s
  ici_gbps: float  # bidirectional inter-chip interconnect per chip, GB/s
  cores_per_chip: int  # how a slice name counts: chips (v5e, v6e) or TensorCores (v4, v5p)
  dims: int  # torus dimensions of the topology string (2: "4x4", 3: "2x2x1")


SPECS = {
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOPs bf16, 32 GiB HBM2 at 1200 GBps,
    # ICI 2400 Gbps (= 300 GB/s) per chip; v4-8 names 8 TensorCores = 4 chips.
    "v4": ChipSpec("v4", 32.0, 275.0, 1200.0, 300.0, cores_per_chip=2, dims=3),
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs bf16, 16 GB HBM2 at 819 GBps,
    # bidirectional ICI 400 GBps per chip; v5e-16 names 16 chips.
    "v5e": ChipSpec("v5e", 16.0, 197.0, 819.0, 400.0, cores_per_chip=1, dims=2),
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs bf16, 95 GB HBM2e at 2765 GBps,
    # ICI 4800 Gbps (= 600 GB/s) per chip; v5p-8 names 8 TensorCores = 4 chips ("v5p:2x2x1").
    "v5p": ChipSpec("v5p", 95.0, 459.0, 2765.0, 600.0, cores_per_chip=2, dims=3),
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs bf16, 32 GB HBM at 1638 GBps,
    # bidirectional ICI 800 GBps per chip; v6e-16 names 16 chips.
    "v6e": ChipSpec("v6e", 32.0, 918.0, 1638.0, 800.0, cores_per_chip=1, dims=2),
}

# Slice shapes by chip count (Cloud TPU docs' topology tables for each generation).
_SHAPES_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
_SHAPES_3D = {
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
}

# The generations the fit check compiles for; v4 is listed in SPECS for reference only (its
# deviceless topology exposes TensorCores rather than chips).
COMPILE_GENERATIONS = ("v5e", "v5p", "v6e")


def slice_names() -> list[str]:
  """Every friendly slice name `resolve` accepts, e.g. v5e-16, v5p-8, v6e-256."""
  names = []
  for gen in COMPILE_GENERATIONS:
    spec = SPECS[gen]
    shapes = _SHAPES_2D if spec.dims == 2 else _SHAPES_3D
    names += [f"{gen}-{chips * spec.cores_per_chip}" for chips in shapes]
  return names


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str  # as the user wrote it
  topology: str  # what libtpu's get_topology_desc takes, e.g. "v5e:4x4"
  chips: int
  spec: ChipSpec


def resolve(name: str) -> Slice:
  """A friendly name ("v5e-16", "v5p-8") or a libtpu topology ("v5e:4x4") → `Slice`."""
  name = name.strip()
  if match := re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name):
    gen, count = match.group(1), int(match.group(2))
    spec = SPECS.get(gen)
    if spec is not None and gen in COMPILE_GENERATIONS and count % spec.cores_per_chip == 0:
      chips = count // spec.cores_per_chip
      shape = (_SHAPES_2D if spec.dims == 2 else _SHAPES_3D).get(chips)
      if shape is not None:
        return Slice(name, f"{gen}:{shape}", chips, spec)
  elif match := re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", name):
    gen, shape = match.group(1), match.group(2)
    spec = SPECS.get(gen)
    dims = [int(d) for d in shape.split("x")]
    if spec is not None and gen in COMPILE_GENERATIONS and len(dims) == spec.dims:
      chips = 1
      for d in dims:
        chips *= d
      return Slice(name, name, chips, spec)
  raise UserError(
      f"topology {name!r} is not a TPU slice this check knows; use one of"
      f" {', '.join(slice_names())} (or a libtpu topology such as v5e:4x4, v5p:2x2x1)"
  )
