r"""Training throughput of the ProMAG experiment's models on this machine: JSON lines.

  python benchmarks/train_speed.py                      # every variant below
  python benchmarks/train_speed.py --variants=patch2 --steps=20

One line per (variant, model): steps/s and clips/s of the real jitted train step
(`training.train_step.jit_train_step`, the experiment's `experiment_config`), the step's FLOPs
from XLA's cost analysis and the achieved GFLOP/s, compile time, XLA's buffer sizes and the
process's peak RSS. Variants are the throughput levers: the previous experiment's
architecture (`previous`: 8 base channels, no patchify, mean-free RMS norm), patchified input
and output (`patch2`, `patch4`), wider levels, and per-frame GroupNorm instead of RMS norm.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_VARIANTS = flags.DEFINE_list(
    "variants",
    ["previous", "patch2", "patch2_wide", "patch4"],
    "Architectures to time (see VARIANTS).",
)
_MODELS = flags.DEFINE_list(
    "models", ["promag_4x", "promag_8x", "direct_8x"], "Stage configs to time."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after one warm-up step.")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from bootvae_jax.experiments import bootstrap_plan as plan  # pylint: disable=g-import-not-at-top
  from bootvae_jax.core import sharding  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import train_state  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import train_step  # pylint: disable=g-import-not-at-top

  for variant in _VARIANTS.value:
    for name in _MODELS.value:
      config = plan.experiment_config(name, variant=variant, data_dir="", run_root="")
      config.data.source = "synthetic"  # the step's cost does not depend on the pixels
      mesh = sharding.make_mesh(config.mesh)
      setup, state = train_state.create_train_state(config, mesh)
      step = train_step.jit_train_step(setup, None)
      b, t = config.data.batch_size, config.data.num_frames
      h, w = config.data.crop_size
      rng = np.random.default_rng(0)
      batch = {
          "video": jax.device_put(
              rng.uniform(-1, 1, (b, t, h, w, 3)).astype(np.float32),
              sharding.batch_sharding(mesh),
          )
      }
      started = time.perf_counter()
      compiled = step.lower(state, batch, None).compile()
      compile_s = time.perf_counter() - started
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost.get("flops", float("nan")))
      memory = compiled.memory_analysis()
      state, metrics = compiled(state, batch, None)  # warm-up
      jax.block_until_ready(metrics)
      started = time.perf_counter()
      for _ in range(_STEPS.value):
        state, metrics = compiled(state, batch, None)
      jax.block_until_ready(metrics)
      elapsed = time.perf_counter() - started
      steps_per_s = _STEPS.value / elapsed
      print(
          json.dumps(
              dict(
                  benchmark="train_speed",
                  variant=variant,
                  model=name,
                  params=int(sum(x.size for x in jax.tree.leaves(state.params))),
                  frozen_params=int(sum(x.size for x in jax.tree.leaves(state.frozen))),
                  clip=[b, t, h, w],
                  steps_per_s=round(steps_per_s, 3),
                  clips_per_s=round(steps_per_s * b, 2),
                  gflop_per_step=round(flops / 1e9, 2),
                  achieved_gflop_per_s=round(flops * steps_per_s / 1e9, 1),
                  compile_s=round(compile_s, 1),
                  xla_temp_mib=round(getattr(memory, "temp_size_in_bytes", 0) / 2**20, 1),
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  load_avg=round(os.getloadavg()[0], 2),
                  backend=jax.default_backend(),
                  devices=jax.device_count(),
              )
          ),
          flush=True,
      )


if __name__ == "__main__":
  app.run(main)
