"""Peak memory of the evaluate command line on one generated clip per size.

  python benchmarks/evaluate_memory.py --workdir=/tmp/evalmem_demo \
      [--clips=17x720x1280,65x1080x1920] [--evaluate_flags=--nomode_gap] [--repo=DIR]

Each clip (T x H x W frames of `data.sources.render_synthetic_clip`, written as H.264) goes
alone in a folder, which a fresh `python -m bootvae_jax.evaluate --num_frames=T` process scores
under `/usr/bin/time -v`. Prints one JSON line per clip: the clip, the peak resident memory of
that process ("Maximum resident set size", MB), its wall seconds, the command, and the
report's PSNR, LPIPS and rFVD.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_WORKDIR = flags.DEFINE_string("workdir", None, "The model: a training run's workdir.")
_CLIPS = flags.DEFINE_list("clips", ["17x720x1280", "65x1080x1920"], "Clips, TxHxW each.")
_EVALUATE_FLAGS = flags.DEFINE_list("evaluate_flags", [], "More flags for evaluate.")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds before a run is stopped.")
_REPO = flags.DEFINE_string(
    "repo", str(REPO), "The checkout whose evaluate runs (another commit's, for a before/after)."
)


def _measure(clip: str, root: str) -> dict:
  from bootvae_jax.core import video_io  # pylint: disable=import-outside-toplevel
  from bootvae_jax.data import sources  # pylint: disable=import-outside-toplevel

  frames, height, width = (int(v) for v in clip.split("x"))
  data, out = os.path.join(root, clip, "data"), os.path.join(root, clip, "out")
  os.makedirs(data)
  video = sources.render_synthetic_clip(0, 0, frames, height, width, detail=0.25)
  video_io.write_video(os.path.join(data, "clip.mp4"), video, 25.0)
  del video
  command = [
      sys.executable,
      "-m",
      "bootvae_jax.evaluate",
      f"--workdir={_WORKDIR.value}",
      f"--data={data}",
      f"--out={out}",
      f"--num_frames={frames}",
      "--noprogress",
      *_EVALUATE_FLAGS.value,
  ]
  result = subprocess.run(
      ["/usr/bin/time", "-v", *command],
      cwd=_REPO.value,
      env=dict(os.environ, PYTHONPATH=_REPO.value),
      capture_output=True,
      text=True,
      timeout=_TIMEOUT.value,
      check=False,
  )
  peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
  wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", result.stderr)
  line = dict(
      clip=clip,
      returncode=result.returncode,
      peak_rss_mb=round(int(peak_kb.group(1)) / 1024) if peak_kb else None,
      wall=wall.group(1) if wall else None,
      command=" ".join(["/usr/bin/time -v python", *command[1:]]),
  )
  if result.returncode == 0:
    report = json.loads(result.stdout.strip().splitlines()[-1])
    line.update({k: report[k] for k in ("psnr", "lpips", "rfvd")})
  else:
    line["stderr_tail"] = result.stderr[-2000:]
  return line


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory() as root:
    for clip in _CLIPS.value:
      print(json.dumps(_measure(clip, root)), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
