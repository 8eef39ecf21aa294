"""Save → restore, resume after a stop, and refusing bad configs before any compute."""

import json
import os

import jax
import numpy as np
import pytest

from bootvae_jax import data as data_lib
from bootvae_jax.training import checkpoints as checkpoints_lib
from bootvae_jax.training import partitioning
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
  mesh = partitioning.make_mesh(config.mesh)
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
  np.testing.assert_array_equal(np.asarray(restored_batch["video"]),
                                np.asarray(next_batch["video"]))
  restored_after, restored_metrics = step_fn(restored, restored_batch, None)
  assert float(restored_metrics["loss"]) == float(metrics["loss"])
  _assert_same_params(restored_after.params, state_after.params)


def test_stopped_run_resumes_from_last_checkpoint(config, tmp_path):
  config.total_steps = 6
  config.checkpoint_every = 3
  straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"))

  interrupted = str(tmp_path / "interrupted")
  trainer.train_and_evaluate(config, interrupted, stop_after_step=5)  # dies after step 5
  assert sorted(os.listdir(os.path.join(interrupted, "checkpoints"))) == ["3"]
  resumed = trainer.train_and_evaluate(config, interrupted)  # same command again
  assert int(resumed.step) == 6
  _assert_same_params(resumed.params, straight.params)
  _assert_same_params(resumed.ema_params, straight.ema_params)
  steps = [json.loads(l)["step"] for l in open(os.path.join(interrupted, "metrics.jsonl"))]
  assert steps[-1] == 6 and 4 in steps  # steps 4-5 were redone after the resume


@pytest.mark.parametrize("field, value, message", [
    ("data.num_frames", 16, "1+4k"),
    ("data.crop_size", (20, 20), "divisible"),
    ("model.encoder.blocks", ("3d", "3d", "wide", "3d"), "model.encoder.blocks[2]"),
    ("total_steps", 0, "config.total_steps"),
    ("freeze", ("encoder/(",), "config.freeze"),
])
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
