"""The README's demo command, end to end (shortened), as a user runs it."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_command_writes_everything_and_resumes(tmp_path):
  workdir = tmp_path / "demo"
  cmd = [
      sys.executable,
      "-m",
      "bootvae_jax.main",
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      "--config.total_steps=4",
      "--config.log_every=2",
      "--config.eval_every=4",
      "--config.checkpoint_every=2",
      "--config.model.base_channels=8",
      "--config.model.num_groups=4",
  ]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "steps/s" in out.stderr and "ETA" in out.stderr  # progress is visible
  records = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == [2, 4]
  assert "l1" not in train[-1]  # the demo's reconstruction term is MSE (l1_weight 0)
  for key in ("loss", "l2", "kl", "grad_norm", "learning_rate", "steps_per_sec", "skipped_updates"):
    assert key in train[-1], key
  assert any("eval/psnr" in r for r in records)
  assert any("eval_ema/psnr" in r for r in records)  # the EMA weights are evaluated too
  assert (workdir / "eval" / "step_0000004.png").is_file()
  assert any(p.name.startswith("events.out.tfevents") for p in workdir.iterdir())
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

  again = subprocess.run(
      cmd[:5] + ["--config.total_steps=6"] + cmd[6:],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from" in again.stderr
  steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl") if "loss" in l]
  assert steps == [2, 4, 6]
