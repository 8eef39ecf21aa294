r"""Scores a model's reconstructions of a folder of videos: PSNR, SSIM, LPIPS, rFVD, and temporal
quality (PSNR per phase of the latent group, flicker, tLP, tOF, the inference mode's PSNR gap to
one whole-clip pass).

  python -m bootvae_jax.evaluate --workdir=workdirs/promag_8x --data=/data/val --out=/tmp/eval
  python -m bootvae_jax.evaluate --official=odvae \
      --weights=vae/diffusion_pytorch_model.safetensors --model_config=vae/config.json \
      --data=/data/val --out=/tmp/eval --num_frames=33 --size=256,256

Writes OUT/metrics.json, OUT/metrics.md, OUT/per_frame_psnr.png, OUT/per_phase_psnr.png and
side-by-side mp4s (input above reconstruction) of the worst clips; prints one JSON line (the
means, rFVD, the temporal scores, where the report is). See `bootvae_jax/evaluation/folder.py` for the recipe. A user error is one line on
stderr and exit status 2 (`bootvae_jax/cli.py`).
"""

from __future__ import annotations

import json

from absl import app
from absl import flags

from bootvae_jax import cli
from bootvae_jax import loading
from bootvae_jax.core import filesystem

# JAX is imported after flag parsing (as main.py does): --help is instant.

loading.define_model_flags()  # --workdir [--step, --ema] or --official, --weights, --model_config
_DATA = flags.DEFINE_string("data", None, "Folder of videos (searched recursively).")
_OUT = flags.DEFINE_string("out", None, "Where to write the report.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 17, "Frames from the start of each video.")
_SIZE = flags.DEFINE_string(
    "size",
    None,
    "Resize frames to H,W (e.g. 256,256); default: the"
    " file's size, centre-cropped to a multiple of the spatial factor.",
)
_MAX_VIDEOS = flags.DEFINE_integer("max_videos", None, "Score at most this many videos.")
_MODE = flags.DEFINE_enum(
    "mode",
    "auto",
    ["auto", "stream", "crossfade", "tiled"],
    "How to reconstruct (as the reconstruct CLI; auto: stream if exact).",
)
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 17, "Frames per (first) chunk (1 + r·k).")
_WORST = flags.DEFINE_integer("worst", 2, "Side-by-side mp4s of this many lowest-PSNR videos.")
_RFVD = flags.DEFINE_bool("rfvd", True, "Compute rFVD (I3D; the slow part on a CPU).")
_MODE_GAP = flags.DEFINE_bool(
    "mode_gap",
    True,
    "Also reconstruct each clip in one whole-clip pass and report the PSNR gap of --mode to it"
    " (its memory grows with --num_frames and the frame size).",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from bootvae_jax.evaluation import folder
  from bootvae_jax.inference import reconstruct

  size = reconstruct.parse_size(_SIZE.value)  # flags first, before loading anything
  if filesystem.is_url(_DATA.value):
    raise cli.UserError(f"--data={_DATA.value}: a local folder (PyAV reads the video files)")
  filesystem.check_output_dir("out", _OUT.value)
  loaded = loading.load_from_flags()
  model, source = loaded.model, loaded.source
  with filesystem.local_output_dir(_OUT.value) as out:  # a URL: written locally, then copied
    summary = _evaluate(folder, model, size, out, source)
  keys = (
      "videos",
      "frames",
      "psnr",
      "ssim",
      "lpips",
      "rfvd",
      "rfvd_clips",
      "psnr_per_phase",
      "flicker",
      "tlp",
      "tof",
      "mode_gap",
      "mode",
      "seconds",
  )
  print(
      json.dumps(
          dict(
              {k: summary[k] for k in keys},
              skipped=len(summary["skipped"]),
              out=_OUT.value,
              model=source,
          )
      )
  )


def _evaluate(folder, model, size, out, source):
  return folder.evaluate_folder(
      model,
      _DATA.value,
      out,
      num_frames=_NUM_FRAMES.value,
      size=size,
      max_videos=_MAX_VIDEOS.value,
      mode=_MODE.value,
      chunk_frames=_CHUNK_FRAMES.value,
      worst=_WORST.value,
      rfvd=_RFVD.value,
      mode_gap=_MODE_GAP.value,
      progress=_PROGRESS.value,
      description=source,
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["data", "out"])
  cli.run(main)
