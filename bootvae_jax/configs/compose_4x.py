r"""Composition, stage I: an OD-VAE-layout base (variant 4), tail-initialised from an image VAE
and trained with the CV-VAE regulariser against that same image VAE.

  python -m bootvae_jax.main --config=configs/compose_4x.py --workdir=workdirs/compose_4x \
      --config.data.path=/path/to/videos
  python -m bootvae_jax.main --config=configs/compose_8x.py --workdir=workdirs/compose_8x \
      --config.data.path=/path/to/videos

`configs/compose_8x.py` then grows it to 8x with ProMAG's cross-level mixing. No published code
combines these: OD-VAE's initialisation gives the base the image VAE's latent space, CV-VAE's
regulariser keeps it there while the base learns time, and ProMAG grows its temporal
compression. The recipe is configs/odvae.py's plus configs/cvvae.py's regulariser.
"""

from bootvae_jax.configs import cvvae
from bootvae_jax.configs import odvae

WORKDIR = "workdirs/compose_4x"


def get_config():
  config = odvae.get_config("4")  # tail-initialised from odvae.IMAGE_VAE
  config.name = "compose_4x"
  config.compat = cvvae.get_config().compat
  config.compat.image_vae = config.init_checkpoint.path  # the same image VAE
  config.target_topology = "v5p-16"  # python -m bootvae_jax.aot checks the fit (README)
  return config
