"""OD-VAE / CV-VAE temporal tiling (`tiled_encode` / `tiled_decode`) against the official
PyTorch outputs in tests/fixtures (see their READMEs: "Built-in tiling").

Fixture arrays are NCTHW; ours are NTHWC. The tiled decodes take the untiled latent, so decode
tiling is checked independently of encode tiling.
"""

import numpy as np
import pytest

from bootvae_jax.inference import chunked
from bootvae_jax.interop import official

TOL = 1e-4

# kind -> {fixture suffix: (encode tile frames, decode tile latents)}: the settings each
# fixture was made with (OD-VAE tile_sample/latent_min_size_t; CV-VAE en_de_n_frames_a_time
# N gives N+1 frames and N/4+1 latents).
SETTINGS = {
    "odvae": {"tiled": (5, 2), "tiled_official": (29, 8)},
    "cvvae": {"tiled": (5, 2), "tiled_official": (17, 5)},
}


def to_nthwc(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 4, 1)))


def _max_err(a, b) -> float:
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def loaded(request, fixtures_dir):
  """(kind, a ChunkCodec of the fixture model, io.npz arrays in NTHWC)."""
  directory = fixtures_dir / request.param
  model = official.load_official(
      request.param, directory / "weights.safetensors", directory / "config.json"
  )
  with np.load(directory / "io.npz") as npz:
    arrays = {k: to_nthwc(npz[k]) for k in npz.files}
  return request.param, chunked.ChunkCodec(model), arrays


@pytest.mark.parametrize("suffix", ["tiled", "tiled_official"])
def test_tiled_encode_matches_official(loaded, suffix):
  kind, codec, arrays = loaded
  frames, _ = SETTINGS[kind][suffix]
  posterior = chunked.tiled_encode(codec, arrays["x_long"], frames)
  err_mean = _max_err(posterior.mean, arrays[f"latent_long_{suffix}"])
  err_logvar = _max_err(posterior.logvar, arrays[f"latent_long_{suffix}_logvar"])
  print(f"{kind} {suffix} encode: mean {err_mean:.2e} logvar {err_logvar:.2e}")
  assert err_mean <= TOL and err_logvar <= TOL
  # Tiling changes the result (clip-wide norms): the check above is not vacuous.
  assert _max_err(posterior.mean, arrays["latent_long_untiled"]) > 10 * TOL


@pytest.mark.parametrize("suffix", ["tiled", "tiled_official"])
def test_tiled_decode_matches_official(loaded, suffix):
  kind, codec, arrays = loaded
  _, latents = SETTINGS[kind][suffix]
  recon = chunked.tiled_decode(codec, arrays["latent_long_untiled"], latents)
  err = _max_err(recon, arrays[f"recon_long_{suffix}"])
  print(f"{kind} {suffix} decode: {err:.2e}")
  assert err <= TOL
  assert _max_err(recon, arrays["recon_long_untiled"]) > 10 * TOL
