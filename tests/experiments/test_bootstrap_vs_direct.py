"""The ProMAG experiment's configs, data helpers and reporting (no training: see results/)."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest
from flax import nnx

from bootvae_jax import cli
from bootvae_jax import models
from bootvae_jax.data import splits
from bootvae_jax.experiments import bootstrap_plan as plan
from bootvae_jax.experiments import bootstrap_report as report
from bootvae_jax.experiments import bootstrap_vs_direct as bvd
from bootvae_jax.core import video_io
from bootvae_jax.models import autoencoder
from bootvae_jax.models import progressive
from bootvae_jax.evaluation import clips as clips_lib
from bootvae_jax.training import checkpoints
from bootvae_jax.training import config as config_lib
from bootvae_jax.training import runs

NAMES = plan.HEADLINE + (
    "direct_8x@stage",
    "direct_16x@stage",
    "promag_8x+from_lower",
    "promag_16x+from_lower",
)


@pytest.mark.parametrize("preset", sorted(plan.PRESETS))
def test_every_run_config_validates_builds_and_has_the_planned_steps(preset, tmp_path):
  p = plan.PRESETS[preset]
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
    config = plan.experiment_config(
        name, preset=preset, data_dir=str(tmp_path / "data"), run_root=str(tmp_path / "seed0")
    )
    config_lib.validate(config)
    assert (models.compression_factors(config.model)[0], config.total_steps) == expected[name]
    assert config.data.cache_decoded and config.eval.crop_size == (p.eval_crop, p.eval_crop)
    if name in previous:
      assert plan.previous_label(name) == previous[name]
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
      v: plan.experiment_config(
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
  strided = plan.experiment_config(
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
    plan.apply_variant(configs["patch2"], "nope")


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
  root, tag, info = plan.prepare_data(
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
      plan.prepare_data(str(tmp_path / "work"), 16, [str(tmp_path / "a")], [str(tmp_path / "b")])[2]
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
  summary, from_lower = report.summarize(rows)
  assert (summary["temporal_compression"], summary["grown"]) == (8, "promag_8x")
  assert summary["gain_db"] == pytest.approx(1.5) and summary["gain_std"] == pytest.approx(0.5)
  assert summary["grown_psnr"] == pytest.approx(25.5)
  assert from_lower["grown"] == "promag_8x+from_lower" and from_lower["seeds"] == [1]
  assert from_lower["gain_db"] == pytest.approx(3.0) and from_lower["gain_std"] == 0.0


def test_last_quarter_is_the_gain_from_the_eval_point_nearest_75_percent():
  curve = [(100, 20.0), (200, 21.0), (300, 21.5), (400, 21.75)]
  assert report.last_quarter(curve, 400) == dict(
      steps=400, final_psnr=21.75, psnr_at_75pct=21.5, step_at_75pct=300, last_quarter_gain_db=0.25
  )
  continued = report.last_quarter(curve + [(450, 21.8), (500, 21.7), (533, 21.85)], 533)
  assert (continued["step_at_75pct"], continued["last_quarter_gain_db"]) == (400, 0.1)


def test_the_continued_base_continues_the_finished_base_and_nothing_else(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "eval").mkdir()
  kw = dict(data_dir=str(tmp_path), run_root=str(tmp_path), base_steps=400)
  base = plan.experiment_config("promag_4x", **kw)
  continued = plan.experiment_config(plan.CONTINUED, continue_steps=100, **kw)
  config_lib.validate(continued)
  assert (continued.total_steps, continued.optimizer.decay_steps) == (500, 400)
  fields = lambda c: runs.run_defining(checkpoints.config_json(c))
  assert runs.continues_finished_run(fields(base), fields(continued), 400)
  assert not runs.continues_finished_run(fields(base), fields(continued), 300)  # unfinished
  shorter = plan.experiment_config("promag_4x", **dict(kw, base_steps=300))
  assert not runs.continues_finished_run(fields(shorter), fields(continued), 300)
  # --base_steps=500 --base_decay_steps=400 defines the run the continued base is: its run
  # directory can serve as the base that growth starts from.
  long_base = plan.experiment_config("promag_4x", **dict(kw, base_steps=500, base_decay_steps=400))
  assert fields(long_base) == fields(continued)
  assert fields(long_base) != fields(
      plan.experiment_config("promag_4x", **dict(kw, base_steps=500))
  )

  runs.check_same_run(base, continued, 400, "base_run")  # the finished base: continued
  base.optimizer.learning_rate = 1.0  # the copied run is not the base this config continues
  with pytest.raises(
      cli.UserError, match=r"base_run was trained .* optimizer.learning_rate: 1.0 there"
  ):
    runs.check_same_run(base, continued, 400, "base_run")


def test_plan_runs_orders_filters_and_names_every_run():
  def config_of(label, seed):
    growth = dict(mixing="both", num_res_blocks=1)
    return ml_collections.ConfigDict(dict(name=label, seed=seed, model=dict(growth=growth)))

  plan_of = lambda **kw: plan.plan_runs(config_of, lambda seed: f"/runs/seed{seed}", **kw)
  runs, extra = plan_of(
      seeds=[0, 1],
      growth_inits=["fresh", "from_lower"],
      ablations=["mixing_none"],
      stage_budget=True,
  )
  grown = ["promag_8x", "promag_16x", "promag_8x+from_lower", "promag_16x+from_lower"]
  labels = ["promag_4x"] + grown + ["direct_8x", "direct_16x"]  # the short grown stages first
  assert [(r.label, r.seed) for r in runs] == [(l, s) for s in (0, 1) for l in labels]
  assert runs[-3].run_dir == "/runs/seed1/promag_16x+from_lower"
  assert runs[-3].previous == "promag_8x+from_lower" and runs[-3].change == ""
  assert runs[-1].previous is None
  assert [(r.label, r.seed, r.run_dir) for r in extra] == [
      ("direct_8x@stage", 0, "/runs/seed0/direct_8x_stage"),
      ("direct_16x@stage", 0, "/runs/seed0/direct_16x_stage"),
      ("promag_8x[mixing_none]", 0, "/runs/seed0/ablations/mixing_none"),
  ]
  assert extra[-1].config.model.growth.mixing == "none"  # the ablation's change is applied
  assert extra[-1].config.name == "promag_8x[mixing_none]"

  # Up to 8x, from_lower only: no 16x run; the ablation changes the from_lower model.
  runs, extra = plan_of(
      seeds=[3],
      growth_inits=["from_lower"],
      ablations=["growth_blocks_3"],
      stage_budget=True,
      max_compression=8,
      base_continuation=200,
  )
  assert [r.label for r in runs] == ["promag_4x", "promag_8x+from_lower", "direct_8x"]
  assert [(r.label, r.run_dir, r.previous, r.continues) for r in extra] == [
      ("direct_8x@stage", "/runs/seed3/direct_8x_stage", None, None),
      (
          "promag_8x+from_lower[growth_blocks_3]",
          "/runs/seed3/ablations/growth_blocks_3+from_lower",
          "promag_4x",
          None,
      ),
      (plan.CONTINUED, "/runs/seed3/promag_4x_continued", None, "/runs/seed3/promag_4x"),
  ]
  assert extra[1].config.model.growth.num_res_blocks == 3


class _Shift(nnx.Module):
  """A 'model' whose reconstruction is its input plus 0.1 (PSNR 26.021 dB)."""

  def __call__(self, x):
    return (x + 0.1, None)


def test_scored_runs_are_reported_in_the_results_files_and_cached_per_run(tmp_path, monkeypatch):
  (tmp_path / "data" / "train").mkdir(parents=True)
  (tmp_path / "data" / "eval").mkdir()
  kw = dict(data_dir=str(tmp_path / "data"), base_steps=40, grow_steps=20, continue_steps=20)
  run_root = lambda seed: str(tmp_path / f"seed{seed}")
  config_of = lambda name, seed: plan.experiment_config(
      name, seed=seed, run_root=run_root(seed), **kw
  )
  planned, extra = plan.plan_runs(
      config_of,
      run_root,
      seeds=[0],
      growth_inits=["fresh"],
      ablations=["mixing_none"],
      stage_budget=False,
      max_compression=8,
      base_continuation=20,
  )
  all_runs = planned + extra
  assert [r.label for r in all_runs] == [
      "promag_4x",
      "promag_8x",
      "direct_8x",
      "promag_8x[mixing_none]",
      plan.CONTINUED,
  ]
  timings = {}
  for run in all_runs:
    steps = run.config.total_steps
    timings[(run.label, run.seed)] = runs.RunTiming(10.0, steps, True, steps)
    os.makedirs(run.run_dir)
    with open(os.path.join(run.run_dir, "metrics.jsonl"), "w") as f:
      for step in range(0, steps + 1, 10):
        f.write(json.dumps({"step": step, "eval/psnr": 20.0 + step / 100}) + "\n")
  loaded = []
  monkeypatch.setattr(clips_lib, "_load_model", lambda run_dir: loaded.append(run_dir) or _Shift())
  clips = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 9, 16, 16, 3)).astype(np.float32)

  scored = bvd.score_rows(all_runs, timings, clips, "heldout", "test machine")
  result, offsets = scored
  assert list(result) == ["summary", "rows", "convergence", "observation", "ablations", "curves"]
  grown = next(r for r in result["rows"] if r["model"] == "promag_8x")
  assert grown == dict(
      model="promag_8x",
      temporal_compression=8,
      seed=0,
      psnr=26.021,
      ssim=grown["ssim"],
      psnr_per_clip=[26.021, 26.021],
      steps=60,  # 40 steps of the base + 20 of the growth stage
      stage_steps=20,
      wall_s=20.0,
      stage_wall_s=10.0,
      machine="test machine",
      temporal=grown["temporal"],
  )
  # Off by a constant: every phase of the 8x latent group at 26.021 dB, no flicker.
  assert grown["temporal"]["psnr_per_phase"] == [26.021] * 9
  assert grown["temporal"]["flicker"] == 0.0
  assert offsets == {
      "promag_4x s0": 0,
      "promag_8x s0": 40,
      "direct_8x s0": 0,
      "promag_8x[mixing_none] s0": 40,
      f"{plan.CONTINUED} s0": 0,
  }
  assert [a["change"] for a in result["ablations"]] == [plan.ABLATIONS["mixing_none"][0]]
  assert [(o["model"], o["frames_per_latent"]) for o in result["observation"]] == [
      ("promag_4x", 8),
      ("promag_4x", 8),
      ("promag_4x", 16),
      ("promag_4x", 16),
      ("promag_4x", 4),
      ("promag_8x", 8),
      ("direct_8x", 8),
  ]
  assert result["observation"][0]["input"] == "2x-subsampled clip (5 frames)"
  (convergence,) = result["convergence"]
  assert (convergence["final_psnr"], convergence["continued"]["final_psnr"]) == (20.4, 20.6)
  assert result["summary"][0]["gain_db"] == 0.0  # the same stand-in model for both
  base_dir = str(tmp_path / "seed0" / "promag_4x")
  with open(os.path.join(base_dir, "scores.json")) as f:
    assert sorted(json.load(f)) == [
        "heldout",
        "heldout_held2",
        "heldout_held4",
        "heldout_stride2",
        "heldout_stride4",
        "heldout_temporal",
    ]
  assert loaded.count(base_dir) == 1 and len(loaded) == 4  # no model for the continued run

  # A rerun reads every score from the run directories' caches.
  assert bvd.score_rows(all_runs, timings, clips, "heldout", "test machine") == scored
  assert len(loaded) == 4

  result["setup"] = dict(
      command="python -m bootvae_jax.experiments.bootstrap_vs_direct",
      machine="test machine",
      train_wall_s=50.0,
      total_wall_s=60.0,
      data="the clips",
      model="the models",
  )
  out = tmp_path / "out"
  bvd.write_results(str(out), result, offsets)
  with open(out / "bootstrap_vs_direct.json") as f:
    assert json.load(f)["rows"][1] == grown
  assert os.path.getsize(out / "bootstrap_vs_direct_curves.png") > 1000
  markdown = (out / "bootstrap_vs_direct.md").read_text()
  assert "| 8x | promag_8x | 26.02 ± 0.00 | 26.02 ± 0.00 | +0.00 ± 0.00 | 1 |" in markdown
  assert "| promag_8x | 8x | 0 | 26.02 |" in markdown
  assert f"| {plan.CONTINUED} | 0 | 60 | 20.60 |" in markdown
  assert math.isfinite(grown["ssim"])
  assert "## Temporal quality (held-out clips)" in markdown
