"""The user-error rule of `bootvae_jax/cli.py`, on the real command lines in fresh processes:
a user error is exactly one stderr line `error: ...` and exit status 2, found before any
compute; `--verbose` adds the traceback; a bug keeps its traceback (status 1).

Every scenario fails before a model is built, so each costs a Python (+ JAX) start-up; the
scenarios of a test run concurrently.
"""

import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# JAX_PLATFORMS=cpu: no accelerator probing (and its warning) in these short processes.
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
  """name -> `python -m <args>` run in the checkout, all at once."""
  procs = {
      name: subprocess.Popen(
          [sys.executable, "-m", *args],
          cwd=ROOT,
          env=ENV,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for name, args in commands.items()
  }
  results = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  return results


def _error_line(result: subprocess.CompletedProcess) -> str:
  """The one stderr line of a user error (asserting status 2, one line, no traceback)."""
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("error: ")
  return lines[0]


def test_flag_errors_are_one_line(tmp_path):
  """Errors while parsing the command line (a tiny config file: no JAX import)."""
  config = tmp_path / "tiny.py"
  config.write_text(
      "import ml_collections\n\n\ndef get_config():\n"
      "  return ml_collections.ConfigDict(dict(total_steps=1, model=dict(base_channels=8)))\n"
  )
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  raise RuntimeError('a bug in the config file')\n")
  main = ["bootvae_jax.main", f"--config={config}"]
  workdir = f"--workdir={tmp_path / 'run'}"
  results = _run_all(
      dict(
          missing_flag=main,
          unknown_flag=[*main, workdir, "--bogus=1"],
          bad_value=[*main, workdir, "--config.total_steps=abc"],
          unknown_override=[*main, workdir, "--config.total_step=2"],
          unknown_nested=[*main, workdir, "--config.model.base_chanels=8"],
          missing_config=["bootvae_jax.main", f"--config={tmp_path}/none.py", workdir],
          verbose=[*main, workdir, "--config.total_step=2", "--verbose"],
          bug=["bootvae_jax.main", f"--config={broken}", workdir],
          ablation=["bootvae_jax.experiments.bootstrap_vs_direct", "--ablations=nope"],
          decay=[
              "bootvae_jax.experiments.bootstrap_vs_direct",
              "--base_steps=100",
              "--base_decay_steps=200",
          ],
          experiment=["bootvae_jax.experiments.image_vae_methods", "--experiments=nope"],
      )
  )
  expected = {
      "missing_flag": "error: flag --workdir=None: Flag --workdir must have a value other than None.",
      "unknown_flag": "error: Unknown command line flag 'bogus'",
      "bad_value": (
          "error: flag --config.total_steps=abc: invalid literal for int() with base 10: 'abc'"
      ),
      "unknown_override": (
          "error: --config.total_step=2: config has no field 'total_step'; did you mean"
          " config.total_steps?"
      ),
      "unknown_nested": (
          "error: --config.model.base_chanels=8: config.model has no field 'base_chanels';"
          " did you mean config.model.base_channels?"
      ),
      "missing_config": (
          f"error: --config={tmp_path}/none.py: cannot load this config file ([Errno 2] No such"
          f" file or directory: '{tmp_path}/none.py')"
      ),
      "ablation": (
          "error: unknown ablation 'nope'; known: ['adanorm_scale_shift', 'finetune',"
          " 'finetune_full', 'growth_blocks_3', 'lr_x3', 'mixing_adanorm', 'mixing_add',"
          " 'mixing_none']"
      ),
      "decay": "error: --base_decay_steps=200 must lie in [0, N1 = 100]",
      "experiment": (
          "error: --experiments: unknown ['nope']; known: ['image_vae', 'inflation', 'compat',"
          " 'variants']"
      ),
  }
  for name, line in expected.items():
    assert _error_line(results[name]) == line, name
  # --verbose: the traceback, then the same one line, same status.
  verbose = results["verbose"]
  assert verbose.returncode == 2
  assert verbose.stderr.startswith("Traceback (most recent call last):")
  assert verbose.stderr.strip().splitlines()[-1] == expected["unknown_override"]
  # A bug (here in the config file) is not a user error: Python's traceback, status 1.
  bug = results["bug"]
  assert bug.returncode == 1
  assert "Traceback (most recent call last):" in bug.stderr
  assert bug.stderr.strip().splitlines()[-1] == "RuntimeError: a bug in the config file"
  assert not (tmp_path / "run").exists()


def test_training_config_errors_are_one_line_before_any_compute(tmp_path):
  """The README's demo config with a broken override each: refused by validation, before
  the trainer is imported (no TensorFlow start-up) and before the workdir is created."""
  blocker = tmp_path / "file"
  blocker.write_text("")
  workdir = tmp_path / "run"
  demo = ["bootvae_jax.main", "--config=configs/demo.py"]
  commands = dict(
      unknown_override=[*demo, f"--workdir={workdir}", "--config.nonexistent=1"],
      bad_field=[*demo, f"--workdir={workdir}", "--config.data.num_frames=16"],
      missing_data=[
          *demo,
          f"--workdir={workdir}",
          "--config.data.source=video_folder",
          f"--config.data.path={tmp_path / 'videos'}",
      ],
      workdir_under_a_file=[*demo, f"--workdir={blocker}/run"],
      verbose=[*demo, f"--workdir={workdir}", "--config.total_steps=0", "--verbose"],
  )
  readonly = tmp_path / "readonly"
  if os.geteuid() != 0:  # root may write anywhere
    readonly.mkdir(mode=0o500)
    commands["readonly_workdir"] = [*demo, f"--workdir={readonly}/run"]
  results = _run_all(commands)
  line = _error_line(results["unknown_override"])
  assert line.startswith(
      "error: --config.nonexistent=1: config has no field 'nonexistent'; its fields:"
      " checkpoint_every, compat, data,"
  )
  assert _error_line(results["bad_field"]) == (
      "error: invalid data config: data.num_frames=16; a 4x causal model needs 1+4k frames"
      " (e.g. 13 or 17)"
  )
  assert _error_line(results["missing_data"]) == (
      f"error: invalid data config: data.path='{tmp_path / 'videos'}' is not an existing folder"
  )
  assert _error_line(results["workdir_under_a_file"]) == (
      f"error: --workdir={blocker}/run: {blocker} exists and is not a directory"
  )
  if "readonly_workdir" in results:
    assert _error_line(results["readonly_workdir"]) == (
        f"error: --workdir={readonly}/run: {readonly} is not writable"
    )
  verbose = results["verbose"]
  assert verbose.returncode == 2
  assert verbose.stderr.startswith("Traceback (most recent call last):")
  assert 'bootvae_jax/training/config.py", line' in verbose.stderr  # where validation raised
  assert verbose.stderr.strip().splitlines()[-1] == (
      "error: config.total_steps=0 must be a positive integer"
  )
  assert not workdir.exists()  # nothing written


def test_official_weights_errors_are_one_line(fixtures_dir, tmp_path):
  """`load_official`'s refusals through a CLI: a misspelt config key, a truncated file."""
  directory = fixtures_dir / "odvae"
  config = (directory / "config.json").read_text().replace('"hidden_size":', '"hiden_size":')
  (tmp_path / "config.json").write_text(config)
  truncated = tmp_path / "weights.safetensors"
  truncated.write_bytes((directory / "weights.safetensors").read_bytes()[:100_000])
  reconstruct = [
      "bootvae_jax.inference.reconstruct",
      "--input=in.mp4",
      f"--output={tmp_path / 'out.mp4'}",
      "--official=odvae",
  ]
  results = _run_all(
      dict(
          typo=[
              *reconstruct,
              f"--weights={directory / 'weights.safetensors'}",
              f"--model_config={tmp_path / 'config.json'}",
          ],
          truncated=[
              *reconstruct,
              f"--weights={truncated}",
              f"--model_config={directory / 'config.json'}",
          ],
          # The old name of --model_config still works, with a warning.
          old_flag_name=[
              *reconstruct,
              f"--weights={truncated}",
              f"--official_config={directory / 'config.json'}",
          ],
      )
  )
  assert _error_line(results["typo"]) == (
      f"error: {tmp_path / 'config.json'}: 1 key(s) the official odvae constructor does not"
      " take: 'hiden_size' (did you mean 'hidden_size'?)"
  )
  assert _error_line(results["truncated"]) == (
      f"error: {truncated}: not a readable safetensors file (Error while deserializing header:"
      " incomplete metadata, file not fully covered); it has 100,000 bytes but its header"
      " describes 5,793,614: the file is truncated (an interrupted download or copy?)"
  )
  old = results["old_flag_name"]
  assert old.returncode == 2 and old.stderr.strip().splitlines() == [
      "warning: --official_config is deprecated; use --model_config",
      _error_line(results["truncated"]),
  ]


def test_a_workdir_in_use_or_unreachable_is_one_line(tmp_path):
  """A live run's lock (here a sleeping process's) refuses a second run; a gs:// workdir
  that cannot be reached (no network or no credentials) is one line too."""
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "lock.json").write_text(
        '{"host": "%s", "pid": %d, "started": "2026-01-01T00:00:00+00:00", "heartbeat": 0}'
        % (socket.gethostname(), sleeper.pid)
    )
    demo = ["bootvae_jax.main", "--config=configs/demo.py"]
    results = _run_all(
        dict(
            locked=[*demo, f"--workdir={workdir}"],
            unreachable=[*demo, "--workdir=gs://bootvae-jax-no-such-bucket-x7/run"],
        )
    )
  finally:
    sleeper.kill()
    sleeper.wait()
  assert _last_line(results["locked"]).startswith(
      f"error: --workdir={workdir} is in use by another run: host {socket.gethostname()}, pid"
      f" {sleeper.pid}, started 2026-01-01T00:00:00+00:00"
  )
  assert not (workdir / "checkpoints").exists()
  assert _last_line(results["unreachable"]).startswith(
      "error: --workdir=gs://bootvae-jax-no-such-bucket-x7/run cannot be reached: "
  )


def _last_line(result: subprocess.CompletedProcess) -> str:
  """The error line of a user error found after the trainer started (TensorFlow's start-up
  lines may come before it): status 2, no traceback, one `error:` line, the last."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if l.startswith("error: ")] == lines[-1:], result.stderr[-3000:]
  return lines[-1]
