r"""Direct 8x baseline ("MagViTv2-8x" in the ProMAG paper): the promag_8x architecture with
plain stacking (no cross-level mixing), every parameter trained from scratch, for as many steps
as stages I and II together (equal total training steps).

  python -m bootvae_jax.main --config=configs/direct_8x.py --workdir=workdirs/direct_8x \
      --config.data.path=/path/to/videos
"""

from bootvae_jax.configs import promag_4x
from bootvae_jax.configs import promag_8x
from bootvae_jax.training import stages


def get_config():
  config = stages.direct_baseline(promag_8x.get_config())
  config.name = "direct_8x"
  base = promag_4x.get_config()
  config.total_steps = base.total_steps + config.total_steps
  config.optimizer.warmup_steps = base.optimizer.warmup_steps
  config.loss.gan_weight = base.loss.gan_weight  # trained like stage I: L1 + KL (+ GAN)
  config.loss.gan_start_step = base.loss.gan_start_step
  config.target_topology = "v5p-64"  # python -m bootvae_jax.aot checks the fit (README)
  return config
