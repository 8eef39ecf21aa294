"""Hinge losses, LeCam and the adaptive generator weight on hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bootvae_jax.losses import adaptive_generator_weight
from bootvae_jax.losses import hinge_d_loss
from bootvae_jax.losses import hinge_g_loss
from bootvae_jax.losses import lecam_regularizer
from bootvae_jax.losses import update_lecam_ema

REAL = jnp.asarray([2.0, 0.5, -1.0, 1.0])
FAKE = jnp.asarray([-2.0, 0.0, 0.5, -0.5])


def test_hinge_d_loss_hand_computed():
  # relu(1 - real) = [0, 0.5, 2, 0] -> mean 0.625; relu(1 + fake) = [0, 1, 1.5, 0.5] -> 0.75.
  np.testing.assert_allclose(hinge_d_loss(REAL, FAKE), 0.5 * (0.625 + 0.75), rtol=1e-7)


def test_hinge_d_loss_is_zero_beyond_the_margin():
  assert float(hinge_d_loss(jnp.full((3,), 1.5), jnp.full((3,), -1.0))) == 0.0


def test_hinge_g_loss_hand_computed():
  np.testing.assert_allclose(hinge_g_loss(FAKE), 0.5, rtol=1e-7)  # -mean([-2, 0, .5, -.5])


def test_lecam_regularizer_hand_computed():
  # relu(real - 0.5)^2 = [2.25, 0, 0, 0.25] -> 0.625; relu(0.25 - fake)^2 = [5.0625, .0625,
  # 0, .5625] -> 1.421875.
  got = lecam_regularizer(REAL, FAKE, ema_real=0.25, ema_fake=0.5)
  np.testing.assert_allclose(got, 0.625 + 1.421875, rtol=1e-7)


def test_lecam_gradient_does_not_reach_the_emas():
  grads = jax.grad(lecam_regularizer, argnums=(2, 3))(REAL, FAKE, 0.25, 0.5)
  assert [float(g) for g in grads] == [0.0, 0.0]


def test_update_lecam_ema():
  ema_real, ema_fake = update_lecam_ema(1.0, -1.0, REAL, FAKE, decay=0.9)
  np.testing.assert_allclose(ema_real, 0.9 * 1.0 + 0.1 * 0.625, rtol=1e-7)
  np.testing.assert_allclose(ema_fake, 0.9 * -1.0 + 0.1 * -0.5, rtol=1e-7)


def test_adaptive_weight_hand_made_grads():
  # ||nll|| = sqrt(9 + 16) = 5 over two leaves; ||g|| = 2.
  nll = {'kernel': jnp.asarray([[3.0]]), 'bias': jnp.asarray([4.0])}
  g = {'kernel': jnp.asarray([[0.0]]), 'bias': jnp.asarray([2.0])}
  np.testing.assert_allclose(adaptive_generator_weight(nll, g), 5.0 / (2.0 + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(adaptive_generator_weight(nll, g, eps=0.5), 2.0, rtol=1e-6)


def test_adaptive_weight_is_clipped():
  big = jnp.asarray([1.0, 0.0])
  zero = jnp.zeros((2,))
  np.testing.assert_allclose(adaptive_generator_weight(big, zero), 1e4)  # 1 / 1e-4 = 1e4
  np.testing.assert_allclose(adaptive_generator_weight(big, zero, max_weight=3.0), 3.0)


def test_adaptive_weight_has_no_gradient():
  g = jnp.asarray([2.0])
  grad = jax.grad(lambda a: adaptive_generator_weight(a, g))(jnp.asarray([3.0]))
  assert float(grad[0]) == 0.0


def test_adaptive_weight_rejects_empty_trees():
  with pytest.raises(ValueError, match='empty'):
    adaptive_generator_weight({}, jnp.ones(2))
