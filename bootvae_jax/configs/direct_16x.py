r"""Direct 16x baseline ("MagViTv2-16x" in the ProMAG paper): the promag_16x architecture with
plain stacking, every parameter trained from scratch, for as many steps as stages I, II and III
together (equal total training steps).

  python -m bootvae_jax.main --config=configs/direct_16x.py --workdir=workdirs/direct_16x \
      --config.data.path=/path/to/videos
"""

from bootvae_jax.configs import promag_16x
from bootvae_jax.configs import promag_4x
from bootvae_jax.configs import promag_8x
from bootvae_jax.training import stages


def get_config():
  config = stages.direct_baseline(promag_16x.get_config())
  config.name = "direct_16x"
  base = promag_4x.get_config()
  config.total_steps = base.total_steps + promag_8x.get_config().total_steps + config.total_steps
  config.optimizer.warmup_steps = base.optimizer.warmup_steps
  config.loss.gan_weight = base.loss.gan_weight
  config.loss.gan_start_step = base.loss.gan_start_step
  config.target_topology = "v5p-64"  # python -m bootvae_jax.aot checks the fit (README)
  return config
