r"""ProMAG stage III: grow the trained 8x model (`configs/promag_8x.py`) to 16x temporal.

  python -m bootvae_jax.main --config=configs/promag_16x.py --workdir=workdirs/promag_16x \
      --config.data.path=/path/to/videos

The whole stage-II model (its frozen stage-I bodies and its growth level) is restored from
`promag_8x.WORKDIR` and frozen; a second growth level trains on top
(`--config=configs/promag_16x.py:from_lower` for a stage II grown that way).
"""

from bootvae_jax.configs import promag_8x
from bootvae_jax.training import stages

WORKDIR = "workdirs/promag_16x"


def get_config(growth_init: str = "fresh"):
  """`growth_init`: `model.growth.init` of both growth levels (see `promag_8x`)."""
  config = stages.next_stage(promag_8x.get_config(growth_init), previous_workdir=promag_8x.WORKDIR)
  config.name = "promag_16x"
  config.total_steps = 100_000
  config.target_topology = "v5p-64"  # python -m bootvae_jax.aot checks the fit (README)
  return config
