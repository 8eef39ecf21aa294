"""Inference on whole videos.

* `chunked`: long videos in chunks with bounded memory: ProMAG's cross-faded chunks
  (`reconstruct_long_video`, `reconstruct_stream`, `encode_chunks` / `decode_chunks`) and the
  released OD-VAE / CV-VAE temporal tiling (`tiled_encode` / `tiled_decode`).
* `video_io`: reading and writing video files with PyAV.
* `reconstruct`: the CLI, file in → reconstructed file out, one JSON line of results.
"""
