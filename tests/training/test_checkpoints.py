"""Save → restore and refusing bad configs before any compute (resuming a stopped run:
test_operating.py, through the CLI)."""

import json
import os
import sys
import threading

import jax
import numpy as np
import pytest
from PIL import Image
from flax import nnx

import bootvae_jax
from bootvae_jax import cli
from bootvae_jax import data as data_lib
from bootvae_jax import loading
from bootvae_jax import models
from bootvae_jax.training import checkpoints as checkpoints_lib
from bootvae_jax.core import sharding
from bootvae_jax.training import train_state as train_state_lib
from bootvae_jax.training import train_step as train_step_lib
from bootvae_jax.training import trainer


def _flat(tree):
  return {train_state_lib.path_string(p): np.asarray(v[...]) for p, v in tree.flat_state()}


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_save_restore_gives_identical_params_and_next_loss(config, tmp_path):
  mesh = sharding.make_mesh(config.mesh)
  setup, state = train_state_lib.create_train_state(config, mesh)
  step_fn = train_step_lib.jit_train_step(setup, None)
  batches = data_lib.make_train_batches(config.data, mesh=mesh, seed=config.seed)
  for _ in range(2):
    state, _ = step_fn(state, next(batches), None)
  ckpts = checkpoints_lib.Checkpoints(str(tmp_path), async_save=False)
  ckpts.save(2, state, batches=batches)
  ckpts.wait()
  next_batch = next(batches)
  expected_params = jax.device_get(state.params)
  state_after, metrics = step_fn(state, next_batch, None)

  _, fresh = train_state_lib.create_train_state(config, mesh)
  fresh_batches = data_lib.make_train_batches(config.data, mesh=mesh, seed=config.seed)
  restored = ckpts.restore(2, fresh, setup.state_shardings, batches=fresh_batches)
  _assert_same_params(restored.params, expected_params)
  assert int(restored.step) == 2
  restored_batch = next(fresh_batches)  # the data position came back too
  np.testing.assert_array_equal(
      np.asarray(restored_batch["video"]), np.asarray(next_batch["video"])
  )
  restored_after, restored_metrics = step_fn(restored, restored_batch, None)
  assert float(restored_metrics["loss"]) == float(metrics["loss"])
  _assert_same_params(restored_after.params, state_after.params)


def test_a_finished_run_continues_from_a_copy_at_its_final_learning_rate(config, tmp_path):
  """`copy_latest` + `optimizer.decay_steps`: a finished run continued under another name
  resumes its exact state (data position included) and keeps the cosine's end rate."""
  source, continued = str(tmp_path / "run"), str(tmp_path / "continued")
  config.log_every = 1
  trainer.train_and_evaluate(config, source)  # 6 steps
  assert checkpoints_lib.copy_latest(source, continued) == 6
  assert checkpoints_lib.checkpoint_steps(continued) == [6]
  with pytest.raises(FileExistsError, match="already has checkpoints"):
    checkpoints_lib.copy_latest(source, continued)
  config.total_steps, config.optimizer.decay_steps = 9, 6
  trainer.train_and_evaluate(config, continued)
  with open(os.path.join(continued, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  train_rows = {r["step"]: r for r in logged if "learning_rate" in r}
  assert sorted(train_rows) == [7, 8, 9]
  end = config.optimizer.learning_rate * config.optimizer.end_learning_rate_ratio
  np.testing.assert_allclose([train_rows[s]["learning_rate"] for s in (7, 8, 9)], end, rtol=1e-6)
  batch = config.data.batch_size
  assert [train_rows[s]["data/clips"] for s in (7, 8, 9)] == [7 * batch, 8 * batch, 9 * batch]


def _files(directory) -> dict[str, float]:
  return {
      os.path.join(r, f): os.stat(os.path.join(r, f)).st_mtime_ns
      for r, _, fs in os.walk(directory)
      for f in fs
  }


def test_checkpoint_holds_the_config_and_load_model_reads_it(config, tmp_path):
  """load_model rebuilds the model from the checkpoint's own config (no config.json), at any
  step, raw or EMA; both are evaluated during training; an incompatible resume is refused
  before anything in the workdir changes."""
  config.total_steps = 2
  config.checkpoint_every = 1
  config.eval_every = 2
  config.optimizer.ema_decay = 0.5
  workdir = str(tmp_path / "run")
  state = trainer.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  assert checkpoints_lib.checkpoint_steps(workdir) == [1, 2]

  assert bootvae_jax.load_model is loading.load_model
  model, saved = bootvae_jax.load_model(workdir)
  assert saved.to_dict() == json.loads(config.to_json_best_effort())
  assert (model.temporal_factor, model.spatial_factor) == (4, 8)
  loaded = {
      train_state_lib.path_string(p): np.asarray(v[...])
      for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  expected = {**_flat(state.params), **_flat(state.frozen)}
  assert loaded.keys() == expected.keys()
  for k in expected:
    np.testing.assert_array_equal(loaded[k], expected[k], err_msg=k)
  ema_model, _ = bootvae_jax.load_model(workdir, ema=True)
  kernel = lambda m: np.asarray(m.decoder.conv_out.kernel[...])
  np.testing.assert_array_equal(
      kernel(ema_model), _flat(state.ema_params)["decoder/conv_out/kernel"]
  )
  assert not np.array_equal(kernel(ema_model), kernel(model))
  step1, _ = bootvae_jax.load_model(workdir, step=1)
  assert not np.array_equal(kernel(step1), kernel(model))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .*available: \[1, 2\]"):
    bootvae_jax.load_model(workdir, step=7)

  # EMA weights are evaluated and logged beside the raw ones, the same way.
  record = [
      json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")) if "eval/psnr" in l
  ][-1]
  setup, _ = train_state_lib.create_train_state(config, sharding.make_mesh(config.mesh))
  clips = data_lib.make_eval_clips(config.data, num_clips=config.eval.num_clips)
  eval_fn = train_step_lib.jit_eval_step(setup)
  ema_psnr = float(np.mean(eval_fn(state.ema_params, state.frozen, clips, None)[1]["psnr"]))
  assert record["eval_ema/psnr"] == pytest.approx(ema_psnr, abs=1e-4)
  assert record["eval_ema/psnr"] != record["eval/psnr"] and "eval_ema/ssim" in record
  # Temporal scores of the 5-frame 4x eval clips, and the PNG's rows: input, reconstruction and
  # the |frame difference| of each (16² frames upscaled x8).
  assert {f"eval/psnr_phase_{p}" for p in range(5)} | {"eval/flicker"} <= record.keys()
  with Image.open(os.path.join(workdir, "eval", "step_0000002.png")) as png:
    assert png.size[1] == 4 * 128

  # A resume whose model does not fit the checkpoint: refused, nothing written.
  before = _files(workdir)
  config.model.base_channels = 16  # the same run with a wider model
  config.total_steps = 4
  with pytest.raises(
      cli.UserError,  # the CLI: the message as one line, exit 2
      match=r"step 2\) this config cannot resume: .*shape .*"
      r"model.base_channels: 8 there, 16 here",
  ):
    trainer.train_and_evaluate(config, workdir)
  assert _files(workdir) == before


def test_checkpoints_without_a_config_fall_back_to_config_json(config, tmp_path):
  """Runs written before configs lived in checkpoints keep loading (their config.json)."""
  model = nnx.eval_shape(lambda: models.build_model(config.model))
  params = jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), nnx.state(model, nnx.Param))
  ckpts = checkpoints_lib.Checkpoints(str(tmp_path), async_save=False)
  ckpts.save(5, dict(step=np.int32(5), params=params, frozen={}, ema_params=params))
  ckpts.close()
  with pytest.raises(FileNotFoundError, match="stores no config"):
    checkpoints_lib.read_config(str(tmp_path))
  legacy = json.loads(config.to_json_best_effort())
  legacy["model"]["conv_impl"] = "stacked"  # a field of older configs, dropped on reading
  (tmp_path / "config.json").write_text(json.dumps(legacy))
  loaded, saved = bootvae_jax.load_model(str(tmp_path))
  assert saved.model.base_channels == config.model.base_channels
  assert "conv_impl" not in saved.model
  assert float(np.abs(loaded.decoder.conv_out.kernel[...]).max()) == 0.0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.num_frames", 16, "1+4k"),
        ("data.crop_size", (20, 20), "divisible"),
        ("model.encoder.blocks", ("3d", "3d", "wide", "3d"), "model.encoder.blocks[2]"),
        ("total_steps", 0, "config.total_steps"),
        ("optimizer.decay_steps", -1, "config.optimizer.decay_steps"),
        ("freeze", ("encoder/(",), "config.freeze"),
    ],
)
def test_invalid_config_is_refused_before_compute(config, tmp_path, field, value, message):
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("+", r"\+")):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_unwritable_workdir_is_refused(config, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="not a directory"):
    trainer.train_and_evaluate(config, str(blocker / "run"))


def _hooks():
  return sys.excepthook, threading.excepthook, sys.unraisablehook


@pytest.mark.parametrize("body_raises", [False, True])
def test_quiet_checkpoint_reading_puts_every_hook_back(body_raises):
  """Inside: what an abandoned read raises (its step directory in the message, or a closed
  event loop) is dropped, anything else reaches the previous hooks; after: the very hooks of
  before, also when the body raised."""
  seen = []
  before = _hooks()
  sys.unraisablehook = lambda u: seen.append(("unraisable", str(u.exc_value)))
  threading.excepthook = lambda a: seen.append(("thread", str(a.exc_value)))
  sys.excepthook = lambda t, v, tb: seen.append(("except", str(v)))
  ours = _hooks()
  try:
    with pytest.raises(KeyError) if body_raises else _no_error():
      with loading.quiet_checkpoint_reading() as abandoned:
        assert _hooks() != ours
        sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
        abandoned.add("/runs/a/checkpoints/2")
        sys.excepthook(RuntimeError, RuntimeError("Event loop is closed"), None)
        thread = threading.Thread(target=_raise, args=("reading /runs/a/checkpoints/2/state",))
        thread.start()
        thread.join()
        thread = threading.Thread(target=_raise, args=("a real bug",))
        thread.start()
        thread.join()
        sys.excepthook(ValueError, ValueError("another error"), None)
        if body_raises:
          raise KeyError("the body failed")
    assert _hooks() == ours
  finally:
    sys.excepthook, threading.excepthook, sys.unraisablehook = before
  assert seen == [
      ("except", "Event loop is closed"),  # before a read failed, not noise
      ("thread", "a real bug"),
      ("except", "another error"),
  ]
  assert _hooks() == before


def _raise(message):
  raise OSError(message)


class _no_error:  # pylint: disable=invalid-name

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def test_a_failed_save_is_a_bug_with_its_traceback_not_a_user_error(config, tmp_path, monkeypatch):
  """An OSError inside orbax's save (e.g. another writer removed its temporary directory)
  names orbax's files, not the user's: not one of the CLI's user errors."""
  ckpts = checkpoints_lib.Checkpoints(str(tmp_path / "run"), async_save=False)

  def vanished(*args, **kwargs):
    raise FileNotFoundError(
        2, "No such file or directory", str(tmp_path / "run/checkpoints/1.orbax-checkpoint-tmp")
    )

  monkeypatch.setattr(ckpts.manager, "save", vanished)
  with pytest.raises(checkpoints_lib.CheckpointSaveFailed, match="saving checkpoint 1 in") as error:
    ckpts.save(1, dict(step=np.int32(1)))
  assert not isinstance(error.value, cli.USER_ERRORS)
  assert isinstance(error.value.__cause__, FileNotFoundError)  # in the traceback
  ckpts.close()
