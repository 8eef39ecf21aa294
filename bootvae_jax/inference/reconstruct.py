r"""Reconstructs a video file through a video autoencoder, chunk by chunk, and writes the result.

  # A training run's checkpoint (latest step; --step=N for another, --ema for the EMA weights):
  python -m bootvae_jax.inference.reconstruct --input=in.mp4 --output=out.mp4 \
      --workdir=/runs/promag_8x --chunk_frames=17

  # Released OD-VAE / CV-VAE weights, with their own temporal tiling:
  python -m bootvae_jax.inference.reconstruct --input=in.mp4 --output=out.mp4 \
      --official=odvae --weights=vae/diffusion_pytorch_model.safetensors \
      --model_config=vae/config.json --mode=tiled --chunk_frames=29

Modes (`--mode`, default `auto`):
  * `stream`: exact streaming with the causal-conv cache (`inference/streaming.py`): equal to
    the model on the whole clip, memory bounded by one chunk. `auto` picks it whenever the
    model allows (per-frame norms: our ProMAG models).
  * `crossfade`: ProMAG's overlapping chunks blended in pixel space (`--overlap_frames`,
    `--batch_chunks`); any model; `auto` falls back to it for models with clip-wide norms.
  * `tiled`: the released OD-VAE / CV-VAE tiles sharing one frame (whole video in memory).

Any number of frames: the end is padded by repeating the last frame to the next valid length
(1 + r·k) and the output is trimmed to the input's frame count. A progress bar (frames, frames
per second) goes to stderr (`--noprogress` hides it). Prints one JSON line: frames, size,
PSNR (mean over frames, of the reconstruction before video compression against the decoded
input), seconds, mode and chunk settings. Every mode but `tiled` reads, reconstructs and
writes block by block.

Frames must be divisible by the model's spatial factor: `--size=H,W` resizes (and must be
divisible); without it a frame size that is not divisible is centre-cropped, with a note.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from typing import Any, Iterator

from absl import app
from absl import flags
import numpy as np

from bootvae_jax import cli
from bootvae_jax import loading

# JAX-dependent modules are imported inside the functions, after flag parsing (as main.py
# does), so that --help is instant and XLA_FLAGS set by a launcher take effect.

MODES = ("auto", "stream", "crossfade", "tiled")


def define_flags() -> None:
  """The CLI's flags, defined only when this module runs as the program: its library part is
  imported by other CLIs (`bootvae_jax.evaluate`) whose flags share names (--workdir, ...)."""
  flags.DEFINE_string("input", None, "Video file to reconstruct.")
  flags.DEFINE_string("output", None, "Where to write the reconstructed video.")
  loading.define_model_flags()  # --workdir [--step, --ema] or --official, --weights, --model_config
  flags.DEFINE_enum(
      "mode",
      "auto",
      MODES,
      "stream: exact, with the causal-conv cache; crossfade: ProMAG's overlapping"
      " chunks blended in pixel space; tiled: OD-VAE/CV-VAE tiles sharing one"
      " frame; auto: stream if the model allows, else crossfade.",
  )
  flags.DEFINE_integer("chunk_frames", 17, "Frames per (first) chunk (1 + r·k).")
  flags.DEFINE_integer("overlap_frames", 4, "Frames shared by consecutive chunks (crossfade mode).")
  flags.DEFINE_integer("batch_chunks", 1, "Chunks run together (crossfade mode).")
  flags.DEFINE_integer("max_frames", None, "Read at most this many frames.")
  flags.DEFINE_string("size", None, "Resize frames to H,W (e.g. 256,256).")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


# ----------------------------------------------------------------------------------------------
# Frame size.


def parse_size(text: str | None) -> tuple[int, int] | None:
  if not text:
    return None
  try:
    height, width = (int(v) for v in text.split(","))
  except ValueError:
    raise cli.UserError(f"--size={text}: expected H,W such as 256,256") from None
  return height, width


def fit_frame_size(
    height: int, width: int, spatial_factor: int, size: tuple[int, int] | None = None
) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
  """How to make frames fit a model whose spatial factor is `spatial_factor`.

  Args:
    height, width: the file's frame size.
    spatial_factor: the model's spatial compression s.
    size: the requested (height, width), or None for the file's size.

  Returns:
    (resize_to or None, centre crop (top, left, height, width) or None).

  Raises:
    ValueError: a requested size not divisible by s (naming a size that is), or frames
      smaller than s.
  """
  from bootvae_jax.models.autoencoder import frame_size_error

  s = spatial_factor
  if size is not None:
    if (message := frame_size_error(*size, s, what="", size="--size={},{}")) is not None:
      raise cli.UserError(message)
    return tuple(size), None
  if height < s or width < s:
    raise cli.UserError(
        f"frames of {height}x{width} are smaller than the model's spatial factor"
        f" {s}; pass --size"
    )
  h, w = height - height % s, width - width % s
  if (h, w) == (height, width):
    return None, None
  return None, ((height - h) // 2, (width - w) // 2, h, w)


# ----------------------------------------------------------------------------------------------
# Reconstructing a file.


def resolve_mode(codec, mode: str) -> str:
  """`auto` → `stream` when the model streams exactly, else `crossfade`; `stream` on a model
  that cannot is refused (pointing to its official tiling)."""
  from bootvae_jax.inference import streaming

  if mode not in MODES:
    raise cli.UserError(f"mode={mode!r}; use one of {MODES}")
  if mode == "auto":
    return "stream" if codec.stream_blocker is None else "crossfade"
  if mode == "stream":
    streaming.check_streamable(codec)
  return mode


def reconstruct_blocks(
    codec,
    blocks: Iterator[np.ndarray],
    *,
    mode: str,
    chunk_frames: int = 17,
    overlap_frames: int = 4,
    batch_chunks: int = 1,
) -> Iterator[np.ndarray]:
  """Reconstructed frames of time-ordered blocks (B, t, H, W, C) in [-1, 1], in order; as
  many frames come out as went in.

  Args:
    codec: a `chunked.ChunkCodec`.
    blocks: the video's frames, block by block.
    mode: `stream`, `crossfade` or `tiled` (see the module docstring; `resolve_mode` first).
    chunk_frames: (first) chunk length, 1 + r·k.
    overlap_frames, batch_chunks: crossfade only.
  """
  from bootvae_jax.inference import chunked
  from bootvae_jax.inference import streaming

  if mode == "stream":
    yield from streaming.stream_reconstruct_blocks(codec, blocks, chunk_frames)
  elif mode == "crossfade":
    yield from chunked.reconstruct_stream(
        codec,
        blocks,
        chunk_frames=chunk_frames,
        overlap_frames=overlap_frames,
        batch_chunks=batch_chunks,
    )
  elif mode == "tiled":
    video = np.concatenate(list(blocks), axis=1)
    yield chunked.reconstruct_tiled(codec, video, chunk_frames=chunk_frames)
  else:
    raise ValueError(f"mode={mode!r}; use stream, crossfade or tiled (or resolve_mode('auto'))")


def reconstruct_file(
    model,
    input_path: str,
    output_path: str,
    *,
    mode: str = "auto",
    chunk_frames: int = 17,
    overlap_frames: int = 4,
    batch_chunks: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
  """Reads `input_path`, reconstructs it with `model`, writes `output_path`.

  Either path may be a URL (gs://...; `core/filesystem.py`: a local temporary copy is read or
  written, never a local path made from the URL). An output path that cannot be written is
  refused before any compute; a failed run leaves no temporary file.

  Args:
    model: a `VideoAutoencoder` (or a `chunked.ChunkCodec`).
    mode: `auto`, `stream`, `crossfade` or `tiled` (see the module docstring).
    chunk_frames, overlap_frames, batch_chunks: chunking (overlap and batch: crossfade only).
    max_frames: read at most this many frames.
    size: (height, width) to resize to; None keeps the file's size (centre-cropped to a
      multiple of the spatial factor when needed).
    progress: show a tqdm bar (frames written, frames per second) on stderr.

  Returns:
    A JSON-able summary (frames, size, psnr, seconds, settings).
  """
  from bootvae_jax.core import filesystem

  filesystem.check_output_file("output", output_path)
  with (
      filesystem.local_input_file(input_path) as local_input,
      filesystem.local_output_file(output_path) as local_output,
  ):
    summary = _reconstruct_local_file(
        model,
        local_input,
        local_output,
        mode=mode,
        chunk_frames=chunk_frames,
        overlap_frames=overlap_frames,
        batch_chunks=batch_chunks,
        max_frames=max_frames,
        size=size,
        progress=progress,
    )
  if filesystem.is_url(input_path):
    summary["input"] = input_path
  if filesystem.is_url(output_path):
    summary["output"] = output_path
  return summary


def _reconstruct_local_file(
    model,
    input_path,
    output_path,
    *,
    mode,
    chunk_frames,
    overlap_frames,
    batch_chunks,
    max_frames,
    size,
    progress,
) -> dict[str, Any]:
  import tqdm

  from bootvae_jax.data import transforms
  from bootvae_jax.core import metrics
  from bootvae_jax.inference import chunked
  from bootvae_jax.core import video_io

  start = time.perf_counter()
  codec = chunked.as_codec(model)
  mode = resolve_mode(codec, mode)
  if mode == "crossfade":
    chunked.check_chunking(codec.temporal_factor, chunk_frames, overlap_frames)
  info = video_io.video_info(input_path)
  resize, crop = fit_frame_size(info.height, info.width, codec.spatial_factor, size)
  if crop is not None:
    print(
        f"note: {info.height}x{info.width} frames are not divisible by the model's spatial"
        f" factor {codec.spatial_factor}; using the centre {crop[2]}x{crop[3]}"
        " (pass --size to resize instead)",
        file=sys.stderr,
    )
  inputs = collections.deque()  # input frames whose reconstruction has not come out yet
  psnrs = []

  def blocks() -> Iterator[np.ndarray]:
    for block in video_io.iter_video(input_path, max_frames=max_frames, size=resize):
      if crop is not None:
        top, left, h, w = crop
        block = block[:, top : top + h, left : left + w]
      inputs.extend(block)
      yield transforms.to_unit_range(block)[None]

  total = min(info.num_frames, max_frames or info.num_frames) or None
  with (
      video_io.VideoWriter(output_path, info.fps) as writer,
      tqdm.tqdm(
          total=total,
          unit="frame",
          disable=not progress,
          file=sys.stderr,
          desc=f"reconstruct ({mode})",
      ) as bar,
  ):
    for piece in reconstruct_blocks(
        codec,
        blocks(),
        mode=mode,
        chunk_frames=chunk_frames,
        overlap_frames=overlap_frames,
        batch_chunks=batch_chunks,
    ):
      frames = transforms.to_uint8(piece[0])
      reference = np.stack([inputs.popleft() for _ in range(len(frames))])
      # Of the written uint8 frames against the input's (metrics' per-frame convention).
      psnrs.append(
          np.asarray(
              metrics.per_frame_psnr(
                  transforms.to_unit_range(frames)[None], transforms.to_unit_range(reference)[None]
              )[0]
          )
      )
      writer.write(frames)
      bar.update(len(frames))
  if mode == "tiled":
    overlap_frames, batch_chunks = 1, 1
  elif mode == "stream":
    overlap_frames, batch_chunks = 0, 1
  psnr = float(np.mean(np.concatenate(psnrs)))
  seconds = time.perf_counter() - start
  return dict(
      input=os.path.abspath(input_path),
      output=writer.path,
      frames=writer.num_frames,
      height=writer.stream.height,
      width=writer.stream.width,
      fps=info.fps,
      source_size=[info.height, info.width],
      psnr=psnr if np.isfinite(psnr) else None,  # JSON has no infinity (identical frames)
      seconds=round(seconds, 3),
      frames_per_second=round(writer.num_frames / seconds, 3),
      mode=mode,
      chunk_frames=chunk_frames,
      overlap_frames=overlap_frames,
      batch_chunks=batch_chunks,
      temporal_factor=codec.temporal_factor,
      spatial_factor=codec.spatial_factor,
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  size = parse_size(args.size)
  from bootvae_jax.core import filesystem

  filesystem.check_output_file("output", args.output)  # before loading or computing anything
  start = time.perf_counter()
  loaded = loading.load_from_flags(args)
  model, source = loaded.model, loaded.source
  load_seconds = time.perf_counter() - start
  from bootvae_jax.inference import chunked

  codec = chunked.ChunkCodec(model)
  mode = resolve_mode(codec, args.mode)
  for name in ("overlap_frames", "batch_chunks"):
    if mode != "crossfade" and args[name].present:
      raise cli.UserError(
          f"--{name} applies to --mode=crossfade; this run uses --mode={mode}"
          f" (tiles share exactly one frame, streams none); drop --{name}"
      )
  summary = reconstruct_file(
      codec,
      args.input,
      args.output,
      mode=mode,
      chunk_frames=args.chunk_frames,
      overlap_frames=args.overlap_frames,
      batch_chunks=args.batch_chunks,
      max_frames=args.max_frames,
      size=size,
      progress=args.progress,
  )
  print(json.dumps(dict(summary, model=source, load_seconds=round(load_seconds, 3))))


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["input", "output"])
  cli.run(main)
