"""Tests for `bootvae_jax.training.stages`, ProMAG stages through the trainer: checkpoint
transfer, freezing, architecture errors, a short run of every stage config
(configs/promag_*.py, configs/direct_*.py) at tiny scale, and the composition of the seed
papers' methods (configs/compose_4x.py → compose_8x.py: tail-initialised OD-VAE-layout base,
CV-VAE regulariser, grown to 8x with ProMAG mixing)."""

import importlib
import json
import os
import re

import jax
import numpy as np
import pytest

from bootvae_jax import data as data_lib
from bootvae_jax import loading
from bootvae_jax import models
from bootvae_jax.configs import image_vae_tiny
from bootvae_jax.core import sharding
from bootvae_jax.models import architectures
from bootvae_jax.models import image_vae
from bootvae_jax.models import init as init_lib
from bootvae_jax.models import progressive
from bootvae_jax.training import stages
from bootvae_jax.training import train_state as train_state_lib
from bootvae_jax.training import train_step as train_step_lib
from bootvae_jax.training import trainer

import tiny

STAGE1_STEPS = 60
STEPS = 24


def stage_config(name: str, steps: int = 4, previous_workdir: str = ""):
  """A real stage config at test scale; keeps its growth/freeze/transfer settings, which are
  what these tests are about. Four synthetic clips, every batch: the loss then measures
  fitting, not batch luck."""
  config = importlib.import_module(f"bootvae_jax.configs.{name}").get_config()
  tiny.shrink_model_config(config.model)
  config = tiny.tiny_train_config(config, steps=steps, num_frames=17, num_clips=4)
  if config.init_checkpoint.path:
    config.init_checkpoint.path = previous_workdir
  return config


def _flat(tree) -> dict[str, np.ndarray]:
  return {train_state_lib.path_string(p): np.asarray(v) for p, v in tree.flat_state()}


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _losses(workdir: str) -> list[float]:
  return [r["loss"] for r in _rows(workdir) if "loss" in r]


def _meta(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def stage1_workdir(tmp_path_factory):
  """A trained tiny promag_4x run (shared by the tests below). 60 steps: a base that has only
  learnt the mean colour (~20 steps) leaves a grown level nothing to improve."""
  workdir = str(tmp_path_factory.mktemp("promag_4x"))
  trainer.train_and_evaluate(stage_config("promag_4x", STAGE1_STEPS), workdir)
  return workdir


@pytest.fixture(scope="module")
def stage2_workdir(stage1_workdir, tmp_path_factory):
  """promag_8x grown from the stage-I run."""
  workdir = str(tmp_path_factory.mktemp("promag_8x"))
  trainer.train_and_evaluate(stage_config("promag_8x", STEPS, stage1_workdir), workdir)
  return workdir


def _stage2(stage1_workdir, mesh_shape=None, **optimizer):
  config = stage_config("promag_8x", previous_workdir=stage1_workdir)
  config.optimizer.update(optimizer)
  config.mesh.update(mesh_shape or {})
  mesh = sharding.make_mesh(config.mesh)
  setup, state = train_state_lib.create_train_state(config, mesh)
  return config, setup, state


def test_stage_transfer_restores_exactly_the_previous_stage(stage1_workdir):
  # Stage I ran data parallel; stage II restores it onto FSDP-sharded frozen parameters.
  config, setup, fresh = _stage2(stage1_workdir, mesh_shape=dict(data=2, fsdp=2))
  state = stages.init_from_checkpoint(fresh, setup, config.init_checkpoint)
  assert any("fsdp" in leaf.sharding.spec for leaf in jax.tree.leaves(state.frozen))
  source = loading.load_params(stage1_workdir)
  frozen, params, fresh_params = _flat(state.frozen), _flat(state.params), _flat(fresh.params)
  assert frozen and all(re.match(progressive.LOWER_LEVEL, p) for p in frozen)
  assert not any(re.match(progressive.LOWER_LEVEL, p) for p in params)
  ((pattern, template),) = progressive.STAGE_MAPPING
  for path, value in frozen.items():
    np.testing.assert_array_equal(value, source[re.fullmatch(pattern, path).expand(template)])
  # Everything of stage I but its head landed; the new level keeps its fresh initialisation.
  head = [p for p in source if any(re.fullmatch(e, p) for e in progressive.STAGE_EXCLUDE)]
  assert len(frozen) == len(source) - len(head) and "decoder/conv_in/kernel" in head
  for path, value in params.items():
    np.testing.assert_array_equal(value, fresh_params[path])
  np.testing.assert_array_equal(params["encoder/adanorm/scale_kernel"], 0.0)


def test_frozen_lower_level_is_bit_identical_after_training(stage1_workdir):
  config, setup, state = _stage2(stage1_workdir)
  state = stages.init_from_checkpoint(state, setup, config.init_checkpoint)
  step_fn = train_step_lib.jit_train_step(setup, None)
  batches = data_lib.make_train_batches(config.data, mesh=setup.mesh, seed=0)
  before_frozen, before_params = _flat(state.frozen), _flat(state.params)
  for _ in range(3):
    state, metrics = step_fn(state, next(batches), None)
  assert np.isfinite(float(metrics["loss"]))
  for path, value in _flat(state.frozen).items():
    np.testing.assert_array_equal(value, before_frozen[path])
  after = _flat(state.params)
  assert all(not np.array_equal(after[p], before_params[p]) for p in before_params)


def test_finetuned_lower_level_trains_at_the_smaller_rate(stage1_workdir):
  config, setup, state = _stage2(stage1_workdir, finetune_learning_rate_multiplier=0.1)
  assert not _flat(state.frozen)  # the lower level is now trained, not frozen
  state = stages.init_from_checkpoint(state, setup, config.init_checkpoint)
  source = loading.load_params(stage1_workdir)
  np.testing.assert_array_equal(
      _flat(state.params)["encoder/lower/conv_in/kernel"], source["encoder/conv_in/kernel"]
  )
  step_fn = train_step_lib.jit_train_step(setup, None)
  batches = data_lib.make_train_batches(config.data, mesh=setup.mesh, seed=0)
  before = _flat(state.params)
  for _ in range(2):  # the warmup gives step 0 a zero learning rate
    state, _ = step_fn(state, next(batches), None)
  after = _flat(state.params)
  # Adam's first steps move every weight by about the learning rate, so the largest change
  # of a lower-level kernel is about 0.1x that of a new-level kernel.
  change = lambda p: np.abs(after[p] - before[p]).max()
  ratio = change("encoder/lower/conv_in/kernel") / change("encoder/block/0/conv1/kernel")
  assert 0.05 < ratio < 0.2, ratio


def test_mismatched_checkpoint_names_the_first_parameter(stage1_workdir):
  config, setup, state = _stage2(stage1_workdir)
  # A stage-II model on a wider base than the checkpoint: a shape mismatch.
  wide = stage_config("promag_8x", previous_workdir=stage1_workdir)
  wide.model.base_channels = 16
  mesh = sharding.make_mesh(wide.mesh)
  wide_setup, wide_state = train_state_lib.create_train_state(wide, mesh)
  with pytest.raises(
      ValueError,
      match=r"parameter decoder/lower/conv_out/kernel \(from"
      r" decoder/conv_out/kernel\) has shape",
  ):
    stages.init_from_checkpoint(wide_state, wide_setup, wide.init_checkpoint)
  # Without the head exclusion, the stage-I head has no place in the grown model.
  config.init_checkpoint.exclude = ()
  with pytest.raises(
      ValueError, match=r"checkpoint parameter decoder/conv_in/bias has no" r" place in the model"
  ):
    stages.init_from_checkpoint(state, setup, config.init_checkpoint)
  # A deeper base than the checkpoint's: lower-level parameters the checkpoint lacks.
  deep = stage_config("promag_8x", previous_workdir=stage1_workdir)
  deep.model.decoder.num_res_blocks = 2
  deep_setup, deep_state = train_state_lib.create_train_state(deep, mesh)
  with pytest.raises(ValueError, match=r"model parameter decoder/lower/up/0/block/1/.* is missing"):
    stages.init_from_checkpoint(deep_state, deep_setup, deep.init_checkpoint)


def test_stage3_restores_stage2_and_keeps_its_new_level_fresh(stage2_workdir):
  """Stage II's own growth level becomes stage III's `lower`; stage III's new level has the
  same parameter names but must not be initialised from it (AdaNorm stays the identity)."""
  config = stage_config("promag_16x", previous_workdir=stage2_workdir)
  setup, state = train_state_lib.create_train_state(config, sharding.make_mesh(config.mesh))
  state = stages.init_from_checkpoint(state, setup, config.init_checkpoint)
  source = loading.load_params(stage2_workdir)
  frozen, params = _flat(state.frozen), _flat(state.params)
  trained = source["encoder/adanorm/scale_kernel"]
  assert np.abs(trained).max() > 0  # stage II moved its AdaNorm away from the identity
  np.testing.assert_array_equal(frozen["encoder/lower/adanorm/scale_kernel"], trained)
  np.testing.assert_array_equal(
      frozen["encoder/lower/lower/conv_in/kernel"], source["encoder/lower/conv_in/kernel"]
  )
  np.testing.assert_array_equal(params["encoder/adanorm/scale_kernel"], 0.0)
  assert not np.array_equal(
      params["encoder/block/0/conv1/kernel"], source["encoder/block/0/conv1/kernel"]
  )


@pytest.mark.parametrize(
    "name", ["promag_4x", "promag_8x", "promag_16x", "direct_8x", "direct_16x"]
)
def test_stage_config_lowers_its_loss(name, stage1_workdir, stage2_workdir, tmp_path):
  """Each config of the bootstrapped-vs-direct experiment from its real starting point
  (stage I for promag_8x, stage II for promag_16x), STEPS steps (STAGE1_STEPS for stage I).
  The mean loss of the last 4 steps must be at least 10% below that of the first 4."""
  if name == "promag_4x":
    workdir = stage1_workdir
  elif name == "promag_8x":
    workdir = stage2_workdir
  else:
    workdir = str(tmp_path / name)
    trainer.train_and_evaluate(stage_config(name, STEPS, stage2_workdir), workdir)
  losses = _losses(workdir)
  assert len(losses) == (STAGE1_STEPS if name == "promag_4x" else STEPS)
  assert np.all(np.isfinite(losses))
  first, last = np.mean(losses[:4]), np.mean(losses[-4:])
  assert last < 0.9 * first, (first, last)


# ----------------------------------------------------------------------------------------------
# The composition: configs/compose_4x.py → compose_8x.py.


def _odvae_tiny():
  """OD-VAE variant 4 at image_vae_tiny's widths (the layout tail inflation needs)."""
  widths = image_vae_tiny.WIDTHS
  config = architectures.odvae_variant(
      4, hidden_size=widths[0], num_res_blocks=1, hidden_size_mult=[w // widths[0] for w in widths]
  )
  config.num_groups = image_vae_tiny.NUM_GROUPS
  return config


def test_composition_runs_through_the_spine(image_vae_workdir, tmp_path):
  base_dir, grown_dir = str(tmp_path / "compose_4x"), str(tmp_path / "compose_8x")
  config = tiny.shipped_run_config("compose_4x", 3)
  config.model = _odvae_tiny()
  config.init_checkpoint.path = config.compat.image_vae = image_vae_workdir
  assert config.init_checkpoint.inflate == "tail" and config.compat.decoder_weight > 0

  # Before training: the model holds the tail-inflated image VAE.
  mesh = sharding.make_mesh(config.mesh)
  setup, state = train_state_lib.create_train_state(config, mesh)
  state = stages.init_from_checkpoint(state, setup, config.init_checkpoint)
  expected = init_lib.flat_params(
      models.inflate(loading.load_image_vae(image_vae_workdir), config.model, "tail")
  )
  got = _flat(state.params)
  assert sorted(got) == sorted(expected)
  for key in ("encoder/down/2/block/0/conv1/kernel", "decoder/up/3/upsample/conv/kernel"):
    np.testing.assert_array_equal(got[key], expected[key])
    assert not got[key][:-1].any()  # tail: zeros before the last temporal slice

  trainer.train_and_evaluate(config, base_dir)
  train = [r for r in _rows(base_dir) if "loss" in r]
  assert len(train) == 3 and all(r["compat_decoder"] > 0 for r in train)
  # configs/cvvae.py's learnable log-variance moves (gradient 1 - L/e^s > 0 for L1 below 1;
  # the first step's learning rate is 0 in the warm-up).
  assert train[0]["compat_logvar"] == 0.0 and train[-1]["compat_logvar"] < 0.0
  # The image VAE's scaling factor is the model's, in the run's config (stored in the
  # checkpoint) and in the checkpoint metadata.
  assert loading.read_config(base_dir).model.scaling_factor == tiny.IMAGE_VAE_SCALING_FACTOR
  assert _meta(base_dir, 3)["scaling_factor"] == tiny.IMAGE_VAE_SCALING_FACTOR

  grown = tiny.shipped_run_config("compose_8x", 2)
  grown.model = _odvae_tiny()
  grown.model.growth = models.autoencoder.default_model_config().growth
  grown.model.growth.update(levels=1, mixing="both")  # as compose_8x.py grows compose_4x.py
  grown.init_checkpoint.path = base_dir
  grown.compat.image_vae = image_vae_workdir
  assert grown.init_checkpoint.inflate == "" and grown.freeze
  state = trainer.train_and_evaluate(grown, grown_dir)
  assert models.compression_factors(grown.model) == (8, 8)
  rows = _rows(grown_dir)
  assert all(r["compat_decoder"] > 0 for r in rows if "loss" in r)
  assert "eval/compat_psnr" in rows[-1]
  # The trained, frozen base is the lower level of the 8x model, unchanged.
  base = loading.load_params(base_dir)
  lower = _flat(state.frozen)
  key = "encoder/lower/down/2/block/0/conv1/kernel"
  np.testing.assert_array_equal(lower[key], base["encoder/down/2/block/0/conv1/kernel"])
