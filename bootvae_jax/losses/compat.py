"""CV-VAE's latent-compatibility regularisers (arXiv 2405.20279, Sec. 3).

A frozen image VAE (`models/image_vae.py`, run frame by frame) ties the video latent to the
image latent space, so image diffusion models can be reused on video latents:

* decoder side (what the released code trains with): the image decoder decodes every video
  latent frame, z: (B, 1+k, h, w, c) → (B, 1+k, H, W, 3), and is compared (L1) with the frame
  that latent stands for, `map_frames(x)`;
* encoder side: the image encoder encodes every r-th frame, x[:, ::r] → (B, 1+k, h, w, c), and
  the video decoder must reconstruct the whole clip from those latents (L1).

The released code weighs the decoder-side term with a learnable log-variance s (a scalar,
initialised at 0): L / exp(s) + s (`log_variance_weighted`), which settles at s = log L and so
makes the term's gradient scale-free. Latent channels must equal the image VAE's.

The `config.compat` subtree (training/config.py) switches them on:
  image_vae       a diffusers VAE folder or a bootvae_jax image-VAE workdir, opened by
                  `loading.load_image_vae` ('' = off); when set, evaluation reports the
                  compatibility PSNR even with both weights 0
  decoder_weight  weight of the decoder-side term
  encoder_weight  weight of the encoder-side term
  mapping         slice | mean | random: which frame a latent frame stands for
  learned_logvar  the released weighting of the decoder-side term
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from bootvae_jax.core import metrics as metrics_lib
from bootvae_jax.losses import reconstruction
from bootvae_jax.models import autoencoder

MAPPINGS = ("slice", "mean", "random")


def default_config() -> ml_collections.ConfigDict:
  """The `config.compat` subtree: everything off."""
  return ml_collections.ConfigDict(
      dict(
          image_vae="",
          decoder_weight=0.0,
          encoder_weight=0.0,
          mapping="random",
          learned_logvar=False,
          logvar_init=0.0,
      )
  )


def enabled(compat_config) -> bool:
  return compat_config is not None and (
      compat_config.decoder_weight > 0 or compat_config.encoder_weight > 0
  )


def map_frames(
    x: jax.Array, temporal_factor: int, mapping: str, rng: jax.Array | None = None
) -> jax.Array:
  """The frame each latent frame stands for.

  Args:
    x: (B, 1+r·k, H, W, C) video.
    temporal_factor: r.
    mapping: `slice` (frames 0, r, 2r, ...: the last frame of each group, which a causal latent
      ends at), `mean` (frame 0, then the mean of each group of r frames 1+r(j-1) .. rj) or
      `random` (frame 0, then one frame drawn uniformly from each group, per clip).
    rng: needed for `random`.

  Returns:
    (B, 1+k, H, W, C).
  """
  r = temporal_factor
  b, t = x.shape[:2]
  autoencoder.check_frames(t, r)
  if mapping == "slice" or r == 1:
    return x[:, ::r]
  k = (t - 1) // r
  groups = x[:, 1:].reshape((b, k, r) + x.shape[2:])
  if mapping == "mean":
    rest = groups.mean(axis=2)
  elif mapping == "random":
    if rng is None:
      raise ValueError("mapping='random' needs an rng")
    pick = jax.random.randint(rng, (b, k), 0, r)
    rest = jnp.take_along_axis(groups, pick[:, :, None, None, None, None], axis=2)[:, :, 0]
  else:
    raise ValueError(f"compat.mapping={mapping!r}; use one of {MAPPINGS}")
  return jnp.concatenate([x[:, :1], rest], axis=1)


def log_variance_weighted(loss: jax.Array, logvar: jax.Array) -> jax.Array:
  """The released CV-VAE weighting of a loss by a learnable log-variance: L / exp(s) + s."""
  return loss / jnp.exp(logvar) + logvar


def decoder_side(
    image_vae,
    z: jax.Array,
    x: jax.Array,
    *,
    temporal_factor: int,
    mapping: str,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(L1 between the image decoding of every latent frame and its mapped frame, decoding).

  z: (B, 1+k, h, w, c) video latent; x: (B, 1+r·k, H, W, C) the clip it encodes.
  """
  decoded = image_vae.decode(z)
  target = map_frames(x, temporal_factor, mapping, rng)
  return reconstruction.l1_loss(decoded, target), decoded


def encoder_side(
    image_vae, video_model, x: jax.Array, *, temporal_factor: int, rng: jax.Array | None = None
) -> jax.Array:
  """L1 between the clip and the video decoder's reconstruction from image latents of every
  r-th frame (sampled from the image posterior when `rng` is given, else its mean)."""
  posterior = image_vae.encode(x[:, ::temporal_factor])
  z = posterior.mode() if rng is None else posterior.sample(rng)
  return reconstruction.l1_loss(video_model.decode(jax.lax.stop_gradient(z)), x)


def compatibility_psnr(
    image_vae, z: jax.Array, x: jax.Array, *, temporal_factor: int, mapping: str
) -> jax.Array:
  """Per-clip PSNR of the image decoder applied to the video latent against the mapped frames
  (`random` is evaluated as `slice`, to be deterministic): (B,)."""
  mapping = "slice" if mapping == "random" else mapping
  decoded = jnp.clip(image_vae.decode(z), -1.0, 1.0)
  return metrics_lib.psnr(decoded, map_frames(x, temporal_factor, mapping))


def check_image_vae(image_vae, model_config, spatial_factor: int) -> None:
  """Raises ValueError when the image VAE cannot regularise this video model."""
  if image_vae.temporal_factor != 1:
    raise ValueError("compat.image_vae must be a per-frame (image) VAE")
  if image_vae.latent_channels != model_config.latent_channels:
    raise ValueError(
        f"compat.image_vae has {image_vae.latent_channels} latent channels but"
        f" model.latent_channels={model_config.latent_channels}; the video latent must have the"
        " image VAE's channels (4 for SD 1.x/2.x, 16 for SD3-family)"
    )
  if image_vae.spatial_factor != spatial_factor:
    raise ValueError(
        f"compat.image_vae compresses space {image_vae.spatial_factor}x but the"
        f" model {spatial_factor}x; they must agree"
    )
