"""Training losses: pixel reconstruction, LPIPS perceptual, adversarial (hinge, LeCam)."""

from bootvae_jax.losses.adversarial import adaptive_generator_weight
from bootvae_jax.losses.adversarial import hinge_d_loss
from bootvae_jax.losses.adversarial import hinge_g_loss
from bootvae_jax.losses.adversarial import lecam_regularizer
from bootvae_jax.losses.adversarial import update_lecam_ema
from bootvae_jax.losses.perceptual import LPIPS
from bootvae_jax.losses.perceptual import video_perceptual_loss
from bootvae_jax.losses.reconstruction import l1_loss
from bootvae_jax.losses.reconstruction import l2_loss

__all__ = [
    'LPIPS',
    'adaptive_generator_weight',
    'hinge_d_loss',
    'hinge_g_loss',
    'l1_loss',
    'l2_loss',
    'lecam_regularizer',
    'update_lecam_ema',
    'video_perceptual_loss',
]
