"""Weights in and out: released CV-VAE / OD-VAE checkpoints (`official`), diffusers-format image
VAEs (`diffusers_vae`)."""

from bootvae_jax.interop.diffusers_vae import load_diffusers_vae

__all__ = ["load_diffusers_vae"]
