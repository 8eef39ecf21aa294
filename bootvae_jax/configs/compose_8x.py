r"""Composition, stage II: the tail-initialised, CV-VAE-regularised OD-VAE-layout base of
`configs/compose_4x.py` grown to 8x temporal compression with ProMAG's cross-level mixing.

  python -m bootvae_jax.main --config=configs/compose_8x.py --workdir=workdirs/compose_8x \
      --config.data.path=/path/to/videos

The base is restored from `compose_4x.WORKDIR` and frozen (ProMAG); the growth level trains
with the CV-VAE regulariser still on, now mapping 8 frames to each latent frame, so the 8x
latent stays decodable by the image VAE.
"""

from bootvae_jax.configs import compose_4x

from bootvae_jax.training import stages

WORKDIR = "workdirs/compose_8x"


def get_config():
  config = stages.next_stage(compose_4x.get_config(), previous_workdir=compose_4x.WORKDIR)
  config.name = "compose_8x"
  config.total_steps = 100_000
  config.loss.gan_weight = 0.0  # ProMAG stage II: L_rec + λ_KL·KL (+ the regulariser)
  config.target_topology = "v5p-16"  # python -m bootvae_jax.aot checks the fit (README)
  return config
