"""Inference on whole videos.

* `streaming`: exact chunk-by-chunk encode / decode of causal models with per-layer caches:
  `stream_encode(model, video, chunk_frames)`, `stream_decode(model, z, chunk_latents)`.
* `chunked`: long videos in chunks with bounded memory: ProMAG's cross-faded chunks
  (`reconstruct_long_video`, `reconstruct_stream`, `encode_chunks` / `decode_chunks`) and the
  released OD-VAE / CV-VAE temporal tiling (`tiled_encode` / `tiled_decode`).
* `spatial`: high resolution: spatial tiles with linear blending (any model) and activations
  split along height over a `spatial` mesh axis.
* `video_io`: reading and writing video files with PyAV.
* `reconstruct`: the CLI, file in → reconstructed file out, one JSON line of results.
"""

__all__ = ["stream_decode", "stream_encode"]


def __getattr__(name: str):
  # Imported on first use: `python -m bootvae_jax.inference.reconstruct --help` stays free of
  # JAX (the CLIs import it after flag parsing).
  if name in __all__:
    from bootvae_jax.inference import streaming  # pylint: disable=import-outside-toplevel

    return getattr(streaming, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
