"""The ProMAG experiment's configs, data helpers and reporting (no training: see results/)."""

import json
import os

import ml_collections
import numpy as np
import pytest
from flax import nnx

from bootvae_jax import models
from bootvae_jax.core import metrics
from bootvae_jax.data import splits
from bootvae_jax.experiments import bootstrap_vs_direct as bvd
from bootvae_jax.core import video_io
from bootvae_jax.models import autoencoder
from bootvae_jax.models import progressive
from bootvae_jax.training import config as config_lib

NAMES = bvd.HEADLINE + (
    "direct_8x@stage",
    "direct_16x@stage",
    "promag_8x+from_lower",
    "promag_16x+from_lower",
)


@pytest.mark.parametrize("preset", sorted(bvd.PRESETS))
def test_every_run_config_validates_builds_and_has_the_planned_steps(preset, tmp_path):
  p = bvd.PRESETS[preset]
  n1, n2 = p.base_steps, p.grow_steps
  (tmp_path / "data" / "train").mkdir(parents=True)
  (tmp_path / "data" / "eval").mkdir()
  expected = {
      "promag_4x": (4, n1),
      "promag_8x": (8, n2),
      "promag_16x": (16, n2),
      "direct_8x": (8, n1 + n2),
      "direct_16x": (16, n1 + 2 * n2),
      "direct_8x@stage": (8, n2),
      "direct_16x@stage": (16, n2),
      "promag_8x+from_lower": (8, n2),
      "promag_16x+from_lower": (16, n2),
  }
  previous = {
      "promag_8x": "promag_4x",
      "promag_16x": "promag_8x",
      "promag_8x+from_lower": "promag_4x",
      "promag_16x+from_lower": "promag_8x+from_lower",
  }
  for name in NAMES:
    config = bvd.experiment_config(
        name, preset=preset, data_dir=str(tmp_path / "data"), run_root=str(tmp_path / "seed0")
    )
    config_lib.validate(config)
    assert (models.compression_factors(config.model)[0], config.total_steps) == expected[name]
    assert config.data.cache_decoded and config.eval.crop_size == (p.eval_crop, p.eval_crop)
    if name in previous:
      assert bvd.previous_label(name) == previous[name]
      assert config.init_checkpoint.path == str(tmp_path / "seed0" / previous[name])
      assert config.freeze  # lower level frozen, as in the paper
      assert config.optimizer.learning_rate == p.grow_learning_rate
      from_lower = name.endswith("+from_lower")
      assert config.model.growth.init == ("from_lower" if from_lower else "fresh")
      assert (progressive.HEAD_MAPPING[0] in config.init_checkpoint.mapping) == from_lower
      assert config.eval.at_start  # the curve shows the grown model before its first step
    else:
      assert not config.init_checkpoint.path and not config.freeze and not config.eval.at_start
      assert config.optimizer.learning_rate == p.learning_rate
    nnx.eval_shape(lambda c=config: models.build_model(c.model, rngs=autoencoder.init_rngs(0)))


def test_variants_change_the_architecture_as_documented(tmp_path):
  configs = {
      v: bvd.experiment_config(
          "promag_4x", variant=v, data_dir=str(tmp_path), run_root=str(tmp_path)
      ).model
      for v in (
          "previous",
          "patch2",
          "patch2_rms",
          "patch2_gated",
          "patch2_gated_s4",
          "patch4",
          "gpu",
      )
  }
  strided = bvd.experiment_config(
      "direct_8x", data_dir=str(tmp_path), run_root=str(tmp_path), frame_stride=2
  )
  assert strided.data.frame_stride == 2
  s4 = configs.pop("patch2_gated_s4")
  assert models.compression_factors(s4) == (4, 4) and s4.residual_gate
  assert configs["previous"].patch_size == 1 and configs["previous"].encoder.norm == (
      "rmsnorm_frame"
  )
  assert configs["patch2"].patch_size == 2 and configs["patch2"].encoder.norm == ("groupnorm_frame")
  assert configs["patch2_rms"].decoder.norm == "rmsnorm_frame"
  for gated in (configs["patch2_gated"], configs["gpu"]):
    assert gated.residual_gate and not gated.use_quant_conv
    assert gated.kernel_init == "current_frame" and gated.output_init_scale == 0.1
  assert not configs["patch2"].residual_gate and configs["patch2"].use_quant_conv
  assert configs["patch2_gated"].channel_multipliers == configs["patch2"].channel_multipliers
  for model in configs.values():
    assert models.compression_factors(model) == (4, 8)
  with pytest.raises(ValueError, match="unknown variant"):
    bvd.apply_variant(configs["patch2"], "nope")


def test_split_by_scene_holds_whole_videos_out_and_is_written_once(tmp_path):
  rng = np.random.default_rng(0)
  for side, name, shape in (
      ("a", "one", (20, 40, 60, 3)),
      ("a", "two", (12, 48, 48, 3)),
      ("b", "three", (9, 40, 40, 3)),
  ):
    os.makedirs(tmp_path / side, exist_ok=True)
    video_io.write_video(
        str(tmp_path / side / f"{name}.mp4"), rng.integers(0, 255, shape, np.uint8), 25
    )
  root, tag, info = bvd.prepare_data(
      str(tmp_path / "work"), 16, [str(tmp_path / "a")], [str(tmp_path / "b")]
  )
  assert tag.startswith("_scenes") and os.path.basename(root) == f"data_16{tag}"
  assert [(v["clip"], v["side"], v["size"], v["frames"]) for v in info] == [
      ("one.mp4", "train", [24, 16], 20),
      ("two.mp4", "train", [16, 16], 12),
      ("three.mp4", "eval", [16, 16], 9),
  ]
  assert sorted(os.listdir(os.path.join(root, "train"))) == ["one.mp4", "two.mp4"]
  frames, _ = video_io.read_video(os.path.join(root, "eval", "three.mp4"))
  assert frames.shape == (9, 16, 16, 3)
  os.remove(os.path.join(root, "eval", "three.mp4"))  # a second call reads splits.json only
  assert (
      bvd.prepare_data(str(tmp_path / "work"), 16, [str(tmp_path / "a")], [str(tmp_path / "b")])[2]
      == info
  )
  with pytest.raises(ValueError, match="both in training and held out"):
    splits.split_by_scene(
        str(tmp_path / "x"),
        16,
        [str(tmp_path / "a" / "one.mp4")],
        [str(tmp_path / "a" / "one.mp4")],
    )


def test_summary_reports_mean_and_spread_of_the_gain_per_growth_init():
  rows = [
      dict(model=m, seed=seed, psnr=v)
      for m, seed, v in (
          ("promag_8x", 0, 25.0),
          ("direct_8x", 0, 24.0),
          ("promag_8x", 1, 26.0),
          ("direct_8x", 1, 24.0),
          ("promag_8x+from_lower", 1, 27.0),  # one seed only: compared with direct seed 1
          ("promag_16x", 0, 20.0),  # no direct 16x: no summary row
      )
  ]
  summary, from_lower = bvd.summarize(rows)
  assert (summary["temporal_compression"], summary["grown"]) == (8, "promag_8x")
  assert summary["gain_db"] == pytest.approx(1.5) and summary["gain_std"] == pytest.approx(0.5)
  assert summary["grown_psnr"] == pytest.approx(25.5)
  assert from_lower["grown"] == "promag_8x+from_lower" and from_lower["seeds"] == [1]
  assert from_lower["gain_db"] == pytest.approx(3.0) and from_lower["gain_std"] == 0.0


def test_last_quarter_is_the_gain_from_the_eval_point_nearest_75_percent():
  curve = [(100, 20.0), (200, 21.0), (300, 21.5), (400, 21.75)]
  assert bvd.last_quarter(curve, 400) == dict(
      steps=400, final_psnr=21.75, psnr_at_75pct=21.5, step_at_75pct=300, last_quarter_gain_db=0.25
  )
  continued = bvd.last_quarter(curve + [(450, 21.8), (500, 21.7), (533, 21.85)], 533)
  assert (continued["step_at_75pct"], continued["last_quarter_gain_db"]) == (400, 0.1)


def test_cached_scores_compute_once(tmp_path):
  calls = []
  for _ in range(2):
    assert bvd.cached_scores(str(tmp_path), "k", lambda: calls.append(1) or {"psnr": 1.0}) == {
        "psnr": 1.0
    }
  assert len(calls) == 1
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step, psnr in ((10, 20.0), (20, 21.0), (20, 21.5)):
      f.write(json.dumps({"step": step, "eval/psnr": psnr}) + "\n")
    f.write(json.dumps({"step": 20, "loss": 0.1}) + "\n")
  assert bvd.eval_curve(str(tmp_path)) == [(10, 20.0), (20, 21.5)]
  bvd.plot_curves(
      {"promag_4x s0": [(10, 20.0), (20, 21.5)], "promag_8x s0": [(5, 19.0)]},
      {"promag_8x s0": 20},
      str(tmp_path / "curves.png"),
  )
  assert os.path.getsize(tmp_path / "curves.png") > 1000


def test_a_run_trained_with_another_config_is_refused_not_reused(tmp_path, monkeypatch):
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import trainer  # pylint: disable=g-import-not-at-top

  config = bvd.experiment_config("promag_8x", data_dir=str(tmp_path), run_root=str(tmp_path))
  saved = config.copy_and_resolve_references()
  del saved.model.growth["init"]  # a field added to the code after the run: not compared
  saved.data.batch_size = 99  # not a run-defining field
  monkeypatch.setattr(checkpoints.Checkpoints, "latest_step", lambda self: config.total_steps)
  monkeypatch.setattr(checkpoints, "read_config", lambda run_dir: saved)
  trained = []
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, d: trained.append(d))
  assert bvd.train(config, str(tmp_path / "run"))["finished"] and trained
  saved.optimizer.learning_rate = 1.0
  with pytest.raises(
      ValueError,
      match=r"run was trained with another config \(1 differences,"
      r" e.g. optimizer.learning_rate: 1.0 there, 0.0005 here\); move it away",
  ):
    bvd.train(config, str(tmp_path / "run"))
  saved.optimizer.learning_rate = config.optimizer.learning_rate
  saved.data.frame_stride = 2  # trained on other clips
  with pytest.raises(ValueError, match=r"data.frame_stride: 2 there, 1 here"):
    bvd.train(config, str(tmp_path / "run"))


def test_the_continued_base_resumes_the_finished_base_and_nothing_else(tmp_path, monkeypatch):
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import trainer  # pylint: disable=g-import-not-at-top

  (tmp_path / "train").mkdir()
  (tmp_path / "eval").mkdir()
  kw = dict(data_dir=str(tmp_path), run_root=str(tmp_path), base_steps=400)
  base = bvd.experiment_config("promag_4x", **kw)
  continued = bvd.experiment_config(bvd.CONTINUED, continue_steps=100, **kw)
  config_lib.validate(continued)
  assert (continued.total_steps, continued.optimizer.decay_steps) == (500, 400)
  fields = lambda c: bvd.run_defining(checkpoints.config_json(c))
  assert bvd.continues_finished_run(fields(base), fields(continued), 400)
  assert not bvd.continues_finished_run(fields(base), fields(continued), 300)  # unfinished
  shorter = bvd.experiment_config("promag_4x", **dict(kw, base_steps=300))
  assert not bvd.continues_finished_run(fields(shorter), fields(continued), 300)
  # --base_steps=500 --base_decay_steps=400 defines the run the continued base is: its run
  # directory can serve as the base that growth starts from.
  long_base = bvd.experiment_config("promag_4x", **dict(kw, base_steps=500, base_decay_steps=400))
  assert fields(long_base) == fields(continued)
  assert fields(long_base) != fields(bvd.experiment_config("promag_4x", **dict(kw, base_steps=500)))

  copied, trained = [], []
  monkeypatch.setattr(checkpoints.Checkpoints, "latest_step", lambda self: None)
  monkeypatch.setattr(checkpoints, "resolve_step", lambda run_dir: 400)
  monkeypatch.setattr(checkpoints, "copy_latest", lambda src, dst: copied.append(src) or 400)
  monkeypatch.setattr(checkpoints, "read_config", lambda run_dir: base)
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, d: trained.append(c.total_steps))
  bvd.train(continued, str(tmp_path / "continued"), continue_from="base_run")
  assert copied == ["base_run"] and trained == [500]
  base.optimizer.learning_rate = 1.0  # the copied run is not the base this config continues
  with pytest.raises(
      ValueError, match=r"base_run was trained .* optimizer.learning_rate: 1.0 there"
  ):
    bvd.train(continued, str(tmp_path / "continued"), continue_from="base_run")
  assert copied == ["base_run"] and trained == [500]  # refused before anything was copied


def test_a_run_stopped_by_a_signal_is_not_finished(tmp_path, monkeypatch):
  from bootvae_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import trainer  # pylint: disable=g-import-not-at-top

  config = bvd.experiment_config("direct_8x", data_dir=str(tmp_path), run_root=str(tmp_path))
  reached = [None]  # no checkpoint yet; the trainer returns early after saving step 7
  monkeypatch.setattr(checkpoints.Checkpoints, "latest_step", lambda self: reached[0])
  monkeypatch.setattr(checkpoints, "read_config", lambda run_dir: config)
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, d: reached.__setitem__(0, 7))
  timing = bvd.train(config, str(tmp_path / "run"))
  assert not timing["finished"] and timing["reached"] == 7
  with open(tmp_path / "run" / "timing.json") as f:
    assert not json.load(f)["finished"]
  monkeypatch.setattr(
      trainer, "train_and_evaluate", lambda c, d: reached.__setitem__(0, c.total_steps)
  )
  assert bvd.train(config, str(tmp_path / "run"))["finished"]  # the rerun continues it


def test_plan_runs_orders_filters_and_names_every_run():
  def config_of(label, seed):
    growth = dict(mixing="both", num_res_blocks=1)
    return ml_collections.ConfigDict(dict(name=label, seed=seed, model=dict(growth=growth)))

  plan = lambda **kw: bvd.plan_runs(config_of, lambda seed: f"/runs/seed{seed}", **kw)
  runs, extra = plan(
      seeds=[0, 1],
      growth_inits=["fresh", "from_lower"],
      ablations=["mixing_none"],
      stage_budget=True,
  )
  labels = list(bvd.HEADLINE) + ["promag_8x+from_lower", "promag_16x+from_lower"]
  assert [(r.label, r.seed) for r in runs] == [(l, s) for s in (0, 1) for l in labels]
  assert runs[-1].run_dir == "/runs/seed1/promag_16x+from_lower"
  assert runs[-1].previous == "promag_8x+from_lower" and runs[-1].change == ""
  assert [(r.label, r.seed, r.run_dir) for r in extra] == [
      ("direct_8x@stage", 0, "/runs/seed0/direct_8x_stage"),
      ("direct_16x@stage", 0, "/runs/seed0/direct_16x_stage"),
      ("promag_8x[mixing_none]", 0, "/runs/seed0/ablations/mixing_none"),
  ]
  assert extra[-1].config.model.growth.mixing == "none"  # the ablation's change is applied
  assert extra[-1].config.name == "promag_8x[mixing_none]"

  # Up to 8x, from_lower only: no 16x run; the ablation changes the from_lower model.
  runs, extra = plan(
      seeds=[3],
      growth_inits=["from_lower"],
      ablations=["growth_blocks_3"],
      stage_budget=True,
      max_compression=8,
      base_continuation=200,
  )
  assert [r.label for r in runs] == ["promag_4x", "direct_8x", "promag_8x+from_lower"]
  assert [(r.label, r.run_dir, r.previous, r.continues) for r in extra] == [
      ("direct_8x@stage", "/runs/seed3/direct_8x_stage", None, None),
      (
          "promag_8x+from_lower[growth_blocks_3]",
          "/runs/seed3/ablations/growth_blocks_3+from_lower",
          "promag_4x",
          None,
      ),
      (bvd.CONTINUED, "/runs/seed3/promag_4x_continued", None, "/runs/seed3/promag_4x"),
  ]
  assert extra[1].config.model.growth.num_res_blocks == 3


class _Identity(nnx.Module):
  """A 'model' that reconstructs its input exactly."""

  def __call__(self, x):
    return (x,)


def test_reconstruction_scores_with_an_input_stride_hold_each_frame():
  clips = np.random.default_rng(0).uniform(-1, 1, (2, 9, 16, 16, 3)).astype(np.float32)
  assert bvd.reconstruction_scores(_Identity(), clips)["psnr"] == np.inf
  held = bvd.reconstruction_scores(_Identity(), clips, input_stride=4)
  # Frames 0, 4, 8 are seen; 1-3 show frame 4, 5-7 show frame 8.
  expected = clips[:, [0, 4, 4, 4, 4, 8, 8, 8, 8]]
  psnr = np.asarray(metrics.psnr(expected, clips))
  np.testing.assert_allclose(held["psnr_per_clip"], psnr, atol=1e-3)
