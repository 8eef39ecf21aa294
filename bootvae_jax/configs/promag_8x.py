r"""ProMAG stage II: grow the trained 4x tokenizer (`configs/promag_4x.py`) to 8x temporal.

  python -m bootvae_jax.main --config=configs/promag_8x.py --workdir=workdirs/promag_8x \
      --config.data.path=/path/to/videos

The stage-I encoder and decoder bodies are restored from `promag_4x.WORKDIR` (override with
`--config.init_checkpoint.path`) and frozen; only the growth level (AdaNorm, ResBlock, temporal
down/upsample, the 1×1×1 latent convs) trains, with L1 + KL as in the paper. Set
`--config.optimizer.finetune_learning_rate_multiplier=0.1` to fine-tune the lower level too.

`--config=configs/promag_8x.py:from_lower` starts the new level from the base's head instead
(`model.growth.init`, models/progressive.py; its head and quant convs are copied in).
"""

from bootvae_jax.configs import promag_4x
from bootvae_jax.training import stages

WORKDIR = "workdirs/promag_8x"


def get_config(growth_init: str = "fresh"):
  """`growth_init`: `model.growth.init` ("fresh", the paper's, or "from_lower")."""
  base = promag_4x.get_config()
  base.model.growth.init = growth_init or "fresh"  # set before next_stage: its restore rules
  config = stages.next_stage(base, previous_workdir=promag_4x.WORKDIR)
  config.name = "promag_8x"
  config.total_steps = 100_000
  config.optimizer.warmup_steps = 1_000
  config.loss.gan_weight = 0.0  # stage II: L_rec + λ_KL·KL
  config.target_topology = "v5p-64"  # python -m bootvae_jax.aot checks the fit (README)
  return config
