"""Train-or-reuse of a run directory: a finished run is not retrained, a run of another config
is refused, a finished run is continued under another name; the metrics.jsonl reader."""

import json
import os

import pytest

from bootvae_jax import cli
from bootvae_jax.training import checkpoints
from bootvae_jax.training import runs
from bootvae_jax.training import trainer


def _no_training(config, run_dir):
  raise AssertionError(f"{run_dir} was trained again")


def _with(config, total_steps, decay_steps=0):
  out = config.copy_and_resolve_references()
  out.total_steps, out.optimizer.decay_steps = total_steps, decay_steps
  return out


def test_a_finished_run_is_reused_not_retrained_and_can_be_continued(config, tmp_path, monkeypatch):
  base_dir = str(tmp_path / "base")
  timing = runs.train_or_reuse(config, base_dir)  # 6 steps, trained for real
  assert (timing.steps, timing.finished, timing.reached) == (6, True, 6)
  assert timing.wall_s > 0
  with open(os.path.join(base_dir, "timing.json")) as f:
    assert json.load(f) == dict(wall_s=timing.wall_s, steps=6, finished=True, reached=6)
  base_checkpoints = checkpoints.checkpoint_steps(base_dir)
  assert base_checkpoints[-1] == 6
  with monkeypatch.context() as m:
    m.setattr(trainer, "train_and_evaluate", _no_training)
    assert runs.train_or_reuse(_with(config, 6), base_dir) == timing

  # A longer schedule is not the base's first 6 steps: refused before anything is copied.
  with pytest.raises(cli.UserError, match=r"\(1 differences, e.g. total_steps: 6 there, 9 here"):
    runs.train_or_reuse(_with(config, 9), str(tmp_path / "other"), continue_from=base_dir)
  assert not (tmp_path / "other").exists()
  # The base's schedule held at its end (decay_steps = 6) continues it 3 more steps.
  continued_dir = str(tmp_path / "continued")
  timing = runs.train_or_reuse(_with(config, 9, 6), continued_dir, continue_from=base_dir)
  assert (timing.steps, timing.finished, timing.reached) == (9, True, 9)
  assert checkpoints.checkpoint_steps(continued_dir)[-1] == 9
  trained = [s for s, _ in runs.read_metrics(continued_dir, "learning_rate")]
  assert trained and min(trained) > 6  # only the continuation's steps were trained here
  assert checkpoints.checkpoint_steps(base_dir) == base_checkpoints  # the base is untouched
  with monkeypatch.context() as m:
    m.setattr(trainer, "train_and_evaluate", _no_training)
    assert runs.train_or_reuse(_with(config, 9, 6), continued_dir, continue_from=base_dir).finished


def test_a_run_trained_with_another_config_is_refused_not_reused(config, tmp_path, monkeypatch):
  saved = config.copy_and_resolve_references()
  del saved.model.growth["init"]  # a field added to the code after the run: not compared
  saved.data.batch_size = 99  # not a run-defining field
  monkeypatch.setattr(checkpoints, "checkpoint_steps", lambda run_dir: [config.total_steps])
  monkeypatch.setattr(checkpoints, "read_config", lambda run_dir: saved)
  trained = []
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, d: trained.append(d))
  assert runs.train_or_reuse(config, str(tmp_path / "run")).finished and trained
  saved.optimizer.learning_rate = 1.0
  with pytest.raises(
      cli.UserError,
      match=r"run was trained with another config \(1 differences,"
      r" e.g. optimizer.learning_rate: 1.0 there, 0.003 here\); move it away",
  ):
    runs.train_or_reuse(config, str(tmp_path / "run"))
  saved.optimizer.learning_rate = config.optimizer.learning_rate
  saved.data.frame_stride = 2  # trained on other clips
  with pytest.raises(cli.UserError, match=r"data.frame_stride: 2 there, 1 here"):
    runs.train_or_reuse(config, str(tmp_path / "run"))


def test_a_run_stopped_by_a_signal_is_not_finished_and_the_rerun_continues(
    config, tmp_path, monkeypatch
):
  reached = []  # no checkpoint yet; the trainer returns early after saving step 3
  monkeypatch.setattr(checkpoints, "checkpoint_steps", lambda run_dir: reached)
  monkeypatch.setattr(checkpoints, "read_config", lambda run_dir: config)
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, d: reached.append(3))
  timing = runs.train_or_reuse(config, str(tmp_path / "run"))
  assert (timing.finished, timing.reached) == (False, 3)
  with open(tmp_path / "run" / "timing.json") as f:
    assert json.load(f)["finished"] is False
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, d: reached.append(6))
  timing = runs.train_or_reuse(config, str(tmp_path / "run"))
  assert (timing.finished, timing.reached) == (True, 6)
  # A finished run is reused only while its checkpoint is the final step's.
  monkeypatch.setattr(trainer, "train_and_evaluate", _no_training)
  assert runs.train_or_reuse(config, str(tmp_path / "run")).finished


def test_a_timing_file_written_before_is_read_as_it_is(config, tmp_path, monkeypatch):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "timing.json").write_text(
      '{"wall_s": 812.4, "steps": 6, "finished": true, "reached": 6}'
  )
  monkeypatch.setattr(checkpoints, "checkpoint_steps", lambda run_dir: [6])
  monkeypatch.setattr(checkpoints, "read_config", lambda run_dir: config)
  monkeypatch.setattr(trainer, "train_and_evaluate", _no_training)
  assert runs.train_or_reuse(config, str(run_dir)) == runs.RunTiming(
      wall_s=812.4, steps=6, finished=True, reached=6
  )


def test_run_defining_fields_and_continuation(config):
  longer = checkpoints.config_json(_with(config, 9, 6))
  config = checkpoints.config_json(config)
  fields = runs.run_defining(config)
  assert sorted(fields) == ["data", "freeze", "loss", "model", "optimizer", "seed", "total_steps"]
  assert fields["data"] == {"frame_stride": 1}
  assert runs.continues_finished_run(config, longer, 6)
  assert not runs.continues_finished_run(config, longer, 3)  # the run was not finished
  longer["optimizer"]["decay_steps"] = 0
  assert not runs.continues_finished_run(config, longer, 6)  # another schedule


def test_read_metrics_keeps_the_last_value_of_a_step(tmp_path):
  assert runs.eval_curve(str(tmp_path)) == []
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step, psnr in ((10, 20.0), (20, 21.0), (20, 21.5), (5, 19.0)):
      f.write(json.dumps({"step": step, "eval/psnr": psnr}) + "\n")
    f.write(json.dumps({"step": 20, "loss": 0.1}) + "\n")
  assert runs.eval_curve(str(tmp_path)) == [(5, 19.0), (10, 20.0), (20, 21.5)]
  assert runs.read_metrics(str(tmp_path), "loss") == [(20, 0.1)]
