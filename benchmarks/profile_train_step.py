"""Where the JAX training step's time goes, by part of the computation and XLA op.

  nice -n 10 python benchmarks/profile_train_step.py [--models=promag_base] [--frames=17] \
      [--size=128] [--threads=2]

Runs `benchmarks/jax_vs_torch.py`'s JAX train step (same model, weights, loss and AdamW; its
flags apply) twice to compile and warm up, then profiles one step (`jax.profiler`) and joins
every executed XLA op with the source op in the optimised HLO's metadata. One JSON line per
(part, op) with its seconds and share of the summed op time, then one with the totals. Parts:

  * `forward`: the forward pass (convs are `conv_general_dilated`);
  * `d/dx conv`: the convs of the backward pass w.r.t. activations (transposed convs);
  * `d/dkernel loop`: the blocked kernel gradients (`ops.conv.conv_kernel_grad`'s im2col and
    `ops.conv.winograd_kernel_grad`'s strips, the train step's only loops): their copies and
    transforms (`concatenate`, `slice`, `stack`) and matmuls;
  * `backward`: everything else of the backward pass (norm, SiLU, pads, reductions).

Measured on the 2-core CPU, ProMAG base at 17×128², on a quiet machine: 88.3 s per step, of
which d/dx convs 37%, forward convs 34%, d/dkernel loop 13% (its copies 8.7 s against 2.5 s
of matmul).
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax_vs_torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
FLAGS.set_default("models", ["promag_base"])


def part_of(op_name: str) -> str:
  """The part of the step an op's metadata `op_name` belongs to (see the module doc)."""
  if "/while" in op_name:
    return "d/dkernel loop"
  if "transpose(" in op_name:  # autodiff's backward pass
    return "d/dx conv" if op_name.endswith("conv_general_dilated") else "backward"
  return "forward"


def op_metadata(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: its metadata op_name} of an optimised HLO module's text."""
  names = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}", line)
    if match:
      op_name = re.search(r'op_name="([^"]*)"', match.group(2))
      names[match.group(1)] = op_name.group(1) if op_name else ""
  return names


def main(argv):
  del argv
  # The trace and the HLO dump of a full-size model run to 100s of MB: removed at the end.
  workdir = tempfile.TemporaryDirectory(prefix="profile_train_step_")
  dump = os.path.join(workdir.name, "hlo")
  # Before JAX starts: dump the optimised HLO of the train step (op names → source ops).
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*"
  ).strip()
  jax_vs_torch.pin_threads(FLAGS.threads)
  import jax  # pylint: disable=import-outside-toplevel

  for name in FLAGS.models:
    config = jax_vs_torch.model_config(name)
    model = jax_vs_torch.random_model(config)
    x, eps = jax_vs_torch.clip_and_noise(config)
    shape = x.shape
    step = jax_vs_torch.jax_ops(model, x, eps)["train_step"]
    step()  # compile
    step()  # warm
    trace_dir = os.path.join(workdir.name, f"trace_{name}")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      step()
      wall = time.perf_counter() - start
    (trace,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)["traceEvents"]
    seconds = collections.Counter()
    for e in events:
      if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == "jit_train_step":
        seconds[e["name"]] += e["dur"] / 1e6
    # One dump per model compiled so far; module numbers grow, so the last is this model's.
    hlo = sorted(glob.glob(f"{dump}/*jit_train_step.cpu_after_optimizations.txt"))[-1]
    with open(hlo) as f:
      metadata = op_metadata(f.read())
    by_part = collections.Counter()
    for op, s in seconds.items():
      op_name = metadata.get(op, "")
      primitive = re.sub(r"\[.*", "", op_name.rsplit("/", 1)[-1]) or op.split(".")[0]
      by_part[(part_of(op_name), primitive)] += s
    total = sum(by_part.values())
    common = {"bench": "profile_train_step", "model": name, "input_shape": list(shape)}
    for (part, primitive), s in by_part.most_common():
      if s >= 0.001 * total:
        line = dict(common, part=part, op=primitive, seconds=round(s, 3))
        print(json.dumps(dict(line, share=round(s / total, 4))), flush=True)
    parts = collections.Counter()
    for (part, _), s in by_part.items():
      parts[part] += s
    summary = {p: round(s, 3) for p, s in parts.most_common()}
    print(
        json.dumps(
            dict(common, step_wall_s=round(wall, 3), op_seconds=round(total, 3), parts=summary)
        ),
        flush=True,
    )
  workdir.cleanup()


if __name__ == "__main__":
  sys.exit(app.run(main))
