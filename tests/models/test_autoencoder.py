"""Tests for `bootvae_jax.models.autoencoder` and the configs of `architectures`.

Shapes of every architecture are checked abstractly (`nnx.eval_shape`). The value checks use a
tiny ProMAG base (widths 8/16, 4 groups) whose parameters are drawn with numpy: drawing them
with `jax.random` compiles one XLA program per parameter shape, ~20 s on a 2-core CPU.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bootvae_jax import build_model
from bootvae_jax.cli import UserError
from bootvae_jax.models import architectures
from bootvae_jax.models import autoencoder
from bootvae_jax.models import blocks
from bootvae_jax.models import layers
from bootvae_jax.models import remat as remat_lib
from bootvae_jax.models.autoencoder import DiagonalGaussian
from bootvae_jax.ops import conv as conv_ops

from tiny import tiny_model_config

FRAMES, SIZE = 9, 32


def tiny_promag(**overrides):
  return tiny_model_config((1, 1, 2, 2), attention=True, **overrides)


def abstract_model(config) -> autoencoder.VideoAutoencoder:
  return nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(config, rngs=nnx.Rngs(0)))


def numpy_initialised_model(config, seed: int = 0) -> autoencoder.VideoAutoencoder:
  """The model with PyTorch-like random parameters drawn by numpy (same seed, same values)."""
  model = abstract_model(config)
  rng = np.random.default_rng(seed)
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape, leaf = variable.get_value().shape, path[-1]
    if leaf == "kernel":
      bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
      value = rng.uniform(-bound, bound, shape)
    elif leaf == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
      value = 0.05 * rng.standard_normal(shape)
    variable.set_value(jnp.asarray(value, jnp.float32))
  return model


def video(seed: int, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32)


def abstract_outputs(model, x_shape):
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  return nnx.eval_shape(lambda m, x: m(x), model, x)


@nnx.jit
def forward(model, x):
  recon, posterior = model(x)
  return recon, posterior.mean, posterior.logvar


@nnx.jit
def decode(model, z):
  return model.decode(z)


@nnx.jit
def sampled_forward(model, x, key):
  return model(x, key)[0]


def loss_fn(model, x):
  recon, posterior = model(x)
  return jnp.mean(jnp.abs(recon - x)) + 1e-3 * jnp.mean(posterior.kl())


@nnx.jit
def loss_and_grads(model, x):
  return nnx.value_and_grad(loss_fn)(model, x)


@pytest.fixture(scope="module")
def tiny():
  return numpy_initialised_model(tiny_promag())


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# ----------------------------------------------------------------------------------------------
# Shapes of every architecture.


def _small_cvvae():
  return architectures.cvvae({"ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1})


def _small_odvae():
  return architectures.odvae(
      {"hidden_size": 32, "hidden_size_mult": [1, 1, 2, 2], "num_res_blocks": 1}
  )


def _variant(n):
  # hidden_size 32, not 16: the OD-VAE converter keeps the released 32 GroupNorm groups.
  return architectures.odvae_variant(
      n, hidden_size=32, hidden_size_mult=[1, 1, 2, 2], num_res_blocks=1
  )


ARCHITECTURES = {
    "promag_tiny": tiny_promag,
    "cvvae_small": _small_cvvae,
    "odvae_small": _small_odvae,
    "odvae_v1": lambda: _variant(1),
    "odvae_v2": lambda: _variant(2),
    "odvae_v3": lambda: _variant(3),
    "odvae_v4": lambda: _variant(4),
}


@functools.cache
def _abstract_architecture(name):
  return abstract_model(ARCHITECTURES[name]())


@pytest.mark.parametrize(
    "name,frames,latent_frames",
    [(name, 9, 3) for name in ARCHITECTURES]
    + [(name, 1, 1) for name in ARCHITECTURES]
    + [("promag_tiny", 17, 5), ("odvae_small", 17, 5)],
)
def test_latent_and_output_shapes(name, frames, latent_frames):
  model = _abstract_architecture(name)
  assert (model.temporal_factor, model.spatial_factor) == (4, 8)
  recon, posterior = abstract_outputs(model, (2, frames, SIZE, 2 * SIZE, 3))
  assert posterior.mean.shape == (2, latent_frames, 4, 8, 4)
  assert posterior.logvar.shape == (2, latent_frames, 4, 8, 4)
  assert recon.shape == (2, frames, SIZE, 2 * SIZE, 3)
  assert recon.dtype == jnp.float32
  z = jax.ShapeDtypeStruct((2, latent_frames, 4, 8, 4), jnp.float32)
  assert nnx.eval_shape(lambda m, z: m.decode(z), model, z).shape == recon.shape


@pytest.mark.parametrize(
    "variant,encoder_blocks,decoder_blocks,conv_in",
    [
        (1, ("3d",) * 4, ("3d",) * 4, "3d"),
        (2, ("2d", "2d", "3d", "3d"), ("2d", "2d", "3d", "3d"), "2d"),
        (3, ("2d", "3d", "3d", "3d"), ("3d",) * 4, "2d"),
        (4, ("2d", "2d", "3d", "3d"), ("3d",) * 4, "2d"),
    ],
)
def test_odvae_variant_layouts(variant, encoder_blocks, decoder_blocks, conv_in):
  config = _variant(variant)
  assert tuple(config.encoder.blocks) == encoder_blocks
  assert tuple(config.decoder.blocks) == decoder_blocks
  assert config.encoder.conv_in == conv_in
  assert tuple(config.encoder.downsample) == ("conv2d:s", "conv3d:st", "conv3d:st", "")
  assert tuple(config.decoder.upsample) == ("", "nearest2d:s", "trilinear:st", "trilinear:st")
  model = abstract_model(config)
  kt = {"3d": 3, "2d": 1}
  for i, kind in enumerate(decoder_blocks):
    assert model.decoder.up[i].block[0].conv1.kernel.shape[0] == kt[kind]
  assert model.encoder.conv_in.kernel.shape[0] == kt[conv_in]
  with pytest.raises(ValueError, match="variants 1-4"):
    architectures.odvae_variant(5)


# ----------------------------------------------------------------------------------------------
# The frame rule and other input errors.


def test_valid_frame_counts():
  assert autoencoder.valid_frame_counts(4, 16) == [13, 17]
  assert autoencoder.valid_frame_counts(4, 15) == [13, 17]
  assert autoencoder.valid_frame_counts(4, 14) == [13, 17]
  assert autoencoder.valid_frame_counts(4, 0) == [1, 5]
  assert autoencoder.valid_frame_counts(8, 10) == [9, 17]
  assert autoencoder.valid_frame_counts(4, 100, count=3) == [97, 101, 105]


def test_frame_rule_error():
  for frames in (1, 5, 9, 17, 33):
    assert autoencoder.frame_rule_error(frames, 4) is None
  assert autoencoder.frame_rule_error(16, 4) == (
      "clip has 16 frames; a 4x causal model needs 1+4k frames (e.g. 13 or 17)"
  )
  assert autoencoder.frame_rule_error(0, 4) is not None
  assert autoencoder.frame_rule_error(10, 8, "latent") == (
      "latent has 10 frames; a 8x causal model needs 1+8k frames (e.g. 9 or 17)"
  )
  assert autoencoder.frame_rule_error(7, 1) is None


def test_wrong_frame_count_raises_with_valid_lengths():
  model = abstract_model(tiny_promag())
  with pytest.raises(ValueError, match=r"16 frames.*1\+4k.*13 or 17"):
    abstract_outputs(model, (1, 16, SIZE, SIZE, 3))
  with pytest.raises(ValueError, match=r"1\+4k"):
    nnx.eval_shape(
        lambda m, x: m.encode(x), model, jax.ShapeDtypeStruct((1, 8, SIZE, SIZE, 3), jnp.float32)
    )


def test_8x_config_frame_rule():
  config = tiny_promag()
  config.encoder.downsample = ("conv3d:st", "conv3d:st", "conv3d:st", "")
  config.decoder.upsample = ("", "d2s:st", "d2s:st", "d2s:st")
  model = abstract_model(config)
  assert model.temporal_factor == 8
  recon, posterior = abstract_outputs(model, (1, 17, SIZE, SIZE, 3))
  assert posterior.mean.shape == (1, 3, 4, 4, 4) and recon.shape == (1, 17, SIZE, SIZE, 3)
  with pytest.raises(ValueError, match=r"1\+8k frames \(e\.g\. 9 or 17\)"):
    abstract_outputs(model, (1, 13, SIZE, SIZE, 3))


def test_frame_size_error():
  assert autoencoder.frame_size_error(32, 48, 8) is None
  assert autoencoder.frame_size_error(30, 32, 8) == (
      "frame size 30x32 is not divisible by the spatial factor 8; sides must be divisible by 8"
      " (e.g. 24x32 or 32x32)"
  )
  assert autoencoder.frame_size_error(4, 16, 8, what="", size="--size={},{}") == (
      "--size=4,16 is not divisible by the spatial factor 8; sides must be divisible by 8"
      " (e.g. --size=8,16)"
  )


def test_frame_size_and_rank_errors():
  model = abstract_model(tiny_promag())
  with pytest.raises(
      ValueError, match=r"frame size 30x32 is not divisible by the spatial" r" factor 8"
  ):
    abstract_outputs(model, (1, FRAMES, 30, 32, 3))
  with pytest.raises(ValueError, match=r"expected video \(B, T, H, W, C\)"):
    nnx.eval_shape(
        lambda m, x: m.encode(x), model, jax.ShapeDtypeStruct((FRAMES, SIZE, SIZE, 3), jnp.float32)
    )


# ----------------------------------------------------------------------------------------------
# Posterior.


def test_diagonal_gaussian_from_moments_kl_mode():
  rng = np.random.default_rng(0)
  mean = rng.standard_normal((2, 3, 2, 2, 4)).astype(np.float32)
  logvar = rng.uniform(-3, 2, (2, 3, 2, 2, 4)).astype(np.float32)
  logvar[0, 0, 0, 0, :2] = [-50.0, 40.0]  # clamped to [-30, 20]
  posterior = DiagonalGaussian.from_moments(jnp.concatenate([mean, logvar], axis=-1))
  clamped = np.clip(logvar, -30, 20)
  np.testing.assert_array_equal(posterior.mean, mean)
  np.testing.assert_array_equal(posterior.logvar, clamped)
  np.testing.assert_array_equal(posterior.mode(), mean)
  np.testing.assert_allclose(posterior.std, np.exp(0.5 * clamped), rtol=1e-6)
  m, lv = mean.astype(np.float64), clamped.astype(np.float64)
  expected_kl = 0.5 * np.sum(m**2 + np.exp(lv) - 1.0 - lv, axis=(1, 2, 3, 4))
  assert posterior.kl().shape == (2,)
  np.testing.assert_allclose(posterior.kl(), expected_kl, rtol=1e-5)
  # KL of the prior itself is zero.
  zero = DiagonalGaussian(jnp.zeros((1, 2, 2, 2, 4)), jnp.zeros((1, 2, 2, 2, 4)))
  assert float(zero.kl()[0]) == 0.0


def test_diagonal_gaussian_sample():
  shape = (4, 5, 8, 8, 4)
  posterior = DiagonalGaussian(jnp.full(shape, 0.5), jnp.full(shape, math.log(0.25)))
  key = jax.random.key(3)
  z = np.asarray(posterior.sample(key))
  np.testing.assert_allclose(z, 0.5 + 0.5 * np.asarray(jax.random.normal(key, shape)), atol=1e-6)
  np.testing.assert_array_equal(z, posterior.sample(key))  # same key, same sample
  assert not np.array_equal(z, posterior.sample(jax.random.key(4)))
  # 5120 draws of N(0.5, 0.5^2): mean within 6 standard errors, std within 5 %.
  assert abs(z.mean() - 0.5) < 6 * 0.5 / math.sqrt(z.size)
  assert abs(z.std() - 0.5) < 0.025


def test_posterior_of_the_model(tiny):
  x = video(0)
  recon, mean, logvar = forward(tiny, x)
  assert mean.shape == logvar.shape == (1, 3, 4, 4, 4)
  assert recon.shape == x.shape and recon.dtype == jnp.float32
  assert np.all(np.isfinite(recon)) and float(np.std(recon)) > 1e-3
  assert float(np.min(logvar)) >= -30.0 and float(np.max(logvar)) <= 20.0
  np.testing.assert_array_equal(DiagonalGaussian(mean, logvar).mode(), mean)
  assert _max_err(decode(tiny, mean), recon) <= 1e-5  # without an rng: decode(mean)
  # With an rng the reconstruction decodes a sample, not the mean.
  key = jax.random.key(0)
  sampled = sampled_forward(tiny, x, key)
  z = DiagonalGaussian(mean, logvar).sample(key)
  assert _max_err(sampled, decode(tiny, z)) <= 1e-5
  assert _max_err(sampled, recon) > 1e-4


# ----------------------------------------------------------------------------------------------
# Causality of the ProMAG base (causal convs + per-frame norms everywhere).


@pytest.mark.parametrize("t", [1, 4, 5, 8])
def test_encoder_and_autoencoder_are_causal(tiny, t):
  """Input frames 4k-3..4k form latent k (frame 0 alone forms latent 0). Perturbing input
  frame t must change no latent before k = ceil(t/4), and no reconstructed frame before that
  latent's first frame 4k-3 (frames 4k-3..t-1 may change: they are decoded from latent k)."""
  x = video(1)
  recon, mean, _ = forward(tiny, x)
  x2 = x.copy()
  x2[:, t] += 0.5
  recon2, mean2, _ = forward(tiny, x2)
  k = math.ceil(t / 4)
  np.testing.assert_array_equal(np.asarray(mean2)[:, :k], np.asarray(mean)[:, :k])
  assert _max_err(mean2[:, k], mean[:, k]) > 1e-4
  first = max(4 * k - 3, 0)
  np.testing.assert_array_equal(np.asarray(recon2)[:, :first], np.asarray(recon)[:, :first])
  assert _max_err(recon2[:, first], recon[:, first]) > 1e-6


@pytest.mark.parametrize("k", [1, 2])
def test_decoder_is_causal(tiny, k):
  """Latent k decodes to frames 4k-3..4k; it must not touch frames before 4k-3."""
  z = np.random.default_rng(2).standard_normal((1, 3, 4, 4, 4)).astype(np.float32)
  y = np.asarray(decode(tiny, z))
  z2 = z.copy()
  z2[:, k] += 1.0
  y2 = np.asarray(decode(tiny, z2))
  first = 4 * k - 3
  np.testing.assert_array_equal(y2[:, :first], y[:, :first])
  assert _max_err(y2[:, first], y[:, first]) > 1e-6


# ----------------------------------------------------------------------------------------------
# jit, grad, remat, conv formulations, bfloat16.


def _grad_leaves(grads: nnx.State) -> dict[str, np.ndarray]:
  return {
      "/".join(map(str, path)): np.asarray(leaf[...]) for path, leaf in nnx.to_flat_state(grads)
  }


@pytest.fixture(scope="module")
def tiny_loss_and_grads(tiny):
  loss, grads = loss_and_grads(tiny, video(3))
  return float(loss), _grad_leaves(grads)


def test_jit_and_grad_give_finite_nonzero_gradients(tiny, tiny_loss_and_grads):
  loss, grads = tiny_loss_and_grads
  assert np.isfinite(loss) and loss > 0
  num_params = len(nnx.to_flat_state(nnx.state(tiny, nnx.Param)))
  assert len(grads) == num_params
  for name, g in grads.items():
    assert np.all(np.isfinite(g)), name
    assert np.abs(g).max() > 0, f"{name} gets no gradient"
  # The loss is the one the forward pass implies.
  x = video(3)
  recon, mean, logvar = (np.asarray(a, np.float64) for a in forward(tiny, x))
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1.0 - logvar)
  assert abs(np.mean(np.abs(recon - x)) + 1e-3 * kl - loss) <= 1e-5 * max(1.0, loss)


def _traced_loss(model, jaxpr_equations):
  graphdef, state = nnx.split(model)
  x = jax.ShapeDtypeStruct((1, FRAMES, SIZE, SIZE, 3), jnp.float32)
  return jaxpr_equations(jax.make_jaxpr(lambda s, x: loss_fn(nnx.merge(graphdef, s), x))(state, x))


def test_remat_wraps_every_level_block(tiny, jaxpr_equations):
  """model.remat puts each res block of the levels (4 encoder + 8 decoder here) under
  jax.checkpoint, and nothing without it."""
  remat_name = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name
  count = lambda model: sum(
      e.primitive.name == remat_name for e in _traced_loss(model, jaxpr_equations)
  )
  assert count(abstract_model(tiny_promag(remat="block"))) == 12
  assert count(tiny) == 0


def test_remat_gives_the_same_loss_and_gradients(tiny, tiny_loss_and_grads):
  """Loss (a function of the outputs) and every parameter's gradient agree."""
  remat = numpy_initialised_model(tiny_promag(remat="block"))
  x = video(3)
  loss, grads = tiny_loss_and_grads
  loss_r, grads_r = loss_and_grads(remat, x)
  assert abs(float(loss_r) - loss) <= 1e-6
  grads_r = _grad_leaves(grads_r)
  assert grads_r.keys() == grads.keys()
  for name in grads:
    assert _max_err(grads_r[name], grads[name]) <= 1e-5, name


def test_conv_implementations_give_the_same_model_outputs(tiny):
  """The model traced with `ops.conv`'s "xla" implementation equals the CPU default."""
  x = video(4)
  recon, mean, logvar = forward(tiny, x)

  @nnx.jit  # a function of its own, traced here under the forced implementation
  def forward_xla(model, x):
    recon, posterior = model(x)
    return recon, posterior.mean, posterior.logvar

  with conv_ops.forced_implementation("xla"):
    recon_x, mean_x, logvar_x = forward_xla(tiny, x)
  assert _max_err(recon_x, recon) <= 1e-5
  assert _max_err(mean_x, mean) <= 1e-5
  assert _max_err(logvar_x, logvar) <= 1e-5


def test_bfloat16_runs_and_stays_close_to_float32(tiny, jaxpr_equations):
  bf16 = numpy_initialised_model(tiny_promag(dtype="bfloat16"))
  # The convolutions really compute in bfloat16 (and in float32 without the option).
  conv_dtypes = lambda model: {
      v.aval.dtype
      for e in _traced_loss(model, jaxpr_equations)
      if e.primitive.name == "conv_general_dilated"
      for v in e.invars
  }
  assert conv_dtypes(bf16) == {jnp.dtype(jnp.bfloat16)}
  assert conv_dtypes(tiny) == {jnp.dtype(jnp.float32)}
  x = video(5)
  recon, mean, _ = forward(tiny, x)
  recon16, mean16, _ = forward(bf16, x)
  assert recon16.dtype == jnp.float32 and mean16.dtype == jnp.float32
  assert np.all(np.isfinite(recon16))
  # bfloat16 keeps 8 mantissa bits: a relative RMS error of a few percent is expected.
  rel = lambda a, b: float(
      np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)) / np.sqrt(np.mean(np.asarray(b) ** 2))
  )
  assert rel(recon16, recon) < 0.05
  assert rel(mean16, mean) < 0.05
  assert rel(recon16, recon) > 1e-4  # and they are not float32 results


# ----------------------------------------------------------------------------------------------
# Config validation.


def _expect_config_error(config, pattern):
  with pytest.raises(ValueError, match=pattern):
    autoencoder.validate_model_config(config)
  with pytest.raises(ValueError, match=pattern):  # the constructor validates before building
    abstract_model(config)


def test_validate_accepts_the_shipped_configs():
  for make in ARCHITECTURES.values():
    autoencoder.validate_model_config(make())
  autoencoder.validate_model_config(architectures.promag_base())
  autoencoder.validate_model_config(architectures.odvae(architectures.odvae_released_kwargs()))
  autoencoder.validate_model_config(architectures.cvvae(architectures.cvvae_released_kwargs()))


def test_kernel_init_reaches_every_conv_and_output_init_scale_the_last():
  """model.kernel_init="current_frame": every 3D kernel of the model has one non-zero tap and
  every conv bias is zero; model.output_init_scale scales the decoder's last kernel only."""
  config = tiny_promag()
  config.kernel_init = "current_frame"
  model = build_model(config)
  config.output_init_scale = 0.1
  small = build_model(config)
  convs = [m for _, m in model.iter_modules() if isinstance(m, layers.Conv3d)]
  assert len(convs) > 20
  for conv in convs:
    kernel = np.asarray(conv.kernel[...])
    np.testing.assert_array_equal(np.asarray(conv.bias[...]), 0.0)
    nonzero_taps = [i for i in range(kernel.shape[0]) if np.abs(kernel[i]).max() > 0]
    assert nonzero_taps == [layers.current_frame_tap(conv.time_padding, kernel.shape[0])]
  np.testing.assert_allclose(
      np.asarray(small.decoder.conv_out.kernel[...]),
      0.1 * np.asarray(model.decoder.conv_out.kernel[...]),
      rtol=1e-6,
  )
  np.testing.assert_array_equal(
      np.asarray(small.encoder.conv_out.kernel[...]), np.asarray(model.encoder.conv_out.kernel[...])
  )
  config = tiny_promag()
  config.kernel_init = "orthogonal"
  _expect_config_error(config, r"model\.kernel_init='orthogonal'")
  config = tiny_promag()
  config.output_init_scale = -1.0
  _expect_config_error(config, r"model\.output_init_scale=-1\.0")


def test_residual_gate_reaches_every_res_block():
  config = tiny_promag()
  config.residual_gate = True
  model = build_model(config)
  res_blocks = [m for _, m in model.iter_modules() if isinstance(m, blocks.ResBlock)]
  assert len(res_blocks) > 8 and all(b.gate is not None for b in res_blocks)
  assert all(float(b.gate[...]) == 0.0 for b in res_blocks)  # every block starts as its shortcut
  config = ml_collections.ConfigDict(dict(config.to_dict(), residual_gate="yes"))  # e.g. from JSON
  _expect_config_error(config, r"model\.residual_gate='yes' must be True or False")


def test_validate_rejects_unknown_block_kinds():
  config = tiny_promag()
  config.encoder.blocks = ("3d", "4d", "3d", "3d")
  _expect_config_error(config, r"model\.encoder\.blocks\[1\]='4d'")
  config = tiny_promag()
  config.decoder.blocks = ("3d", "3d", "3d", "conv")
  _expect_config_error(config, r"model\.decoder\.blocks\[3\]='conv'")
  config = tiny_promag()
  config.decoder.mid_block = "4d"
  _expect_config_error(config, r"model\.decoder\.mid_block='4d'")
  config = tiny_promag()
  config.encoder.conv_in = "1d"
  _expect_config_error(config, r"model\.encoder\.conv_in='1d'")


def test_validate_rejects_bad_resamplers_and_lengths():
  config = tiny_promag()
  config.decoder.upsample = ("", "bicubic:s", "d2s:st", "d2s:st")
  _expect_config_error(config, r"model\.decoder\.upsample\[1\]='bicubic:s'")
  config = tiny_promag()
  config.encoder.blocks = ("3d", "3d", "3d")
  _expect_config_error(config, r"model\.encoder\.blocks has 3 entries")


def test_validate_rejects_mismatched_encoder_decoder_factors():
  config = tiny_promag()
  config.decoder.upsample = ("", "d2s:s", "d2s:s", "d2s:st")  # 2x time instead of 4x
  _expect_config_error(
      config, r"\(4, 8\).*\(2, 8\).*model\.encoder\.downsample and" r" model\.decoder\.upsample"
  )


def test_validate_rejects_widths_not_divisible_by_num_groups():
  config = tiny_promag(num_groups=16)  # widths 8, 8, 16, 16
  _expect_config_error(config, r"level width 8 is not divisible by model\.num_groups=16")


def test_validate_rejects_other_bad_fields():
  cases = [
      (("encoder", "time_padding", "reflect"), r"model\.encoder\.time_padding='reflect'"),
      (("decoder", "mid_attention", "cross"), r"model\.decoder\.mid_attention='cross'"),
      (("encoder", "norm", "batchnorm"), r"model\.encoder\.norm='batchnorm'"),
      ((None, "latent_channels", 16), r"model\.latent_channels"),
      (("decoder", "num_res_blocks", 0), r"model\.decoder\.num_res_blocks=0"),
  ]
  for (side, field, value), pattern in cases:
    config = tiny_promag()
    if field == "latent_channels":
      config.use_quant_conv = False
    (config if side is None else config[side])[field] = value
    _expect_config_error(config, pattern)


# ----------------------------------------------------------------------------------------------
# Patchified input / output (`model.patch_size`).


def tiny_patchified(patch_size: int = 2):
  """The tiny base with 2x2 patches replacing its first spatial downsample (still 8x)."""
  return tiny_promag(
      patch_size=patch_size,
      encoder=dict(tiny_promag().encoder, downsample=("", "conv3d:st", "conv3d:st", "")),
      decoder=dict(tiny_promag().decoder, upsample=("", "", "d2s:st", "d2s:st")),
  )


def test_space_to_depth_inverts_depth_to_space():
  x = np.random.default_rng(0).standard_normal((2, 3, 8, 12, 5)).astype(np.float32)
  patches = layers.space_to_depth(x, 2)
  assert patches.shape == (2, 3, 4, 6, 20)
  # Channel block (fy, fx) of patch (i, j) holds pixel (2i + fy, 2j + fx).
  np.testing.assert_array_equal(patches[0, 1, 2, 3, 5 * 3 : 5 * 4], x[0, 1, 5, 7])
  np.testing.assert_array_equal(layers.depth_to_space(patches, 2), x)


def test_patchified_model_shapes_factors_and_no_full_resolution_conv():
  config = tiny_patchified()
  assert autoencoder.compression_factors(config) == (4, 8)
  model = abstract_model(config)
  recon, posterior = abstract_outputs(model, (1, FRAMES, SIZE, SIZE, 3))
  assert recon.shape == (1, FRAMES, SIZE, SIZE, 3)
  assert posterior.mean.shape == (1, 3, SIZE // 8, SIZE // 8, 4)
  assert model.encoder.conv_in.kernel.shape[-2] == 3 * 4  # 2x2 RGB patches in
  assert model.decoder.conv_out.kernel.shape[-1] == 3 * 4  # and out


def test_patchified_model_is_causal_and_decode_with_head_input_agrees():
  model = numpy_initialised_model(tiny_patchified())
  x = video(1)
  recon, posterior = model(jnp.asarray(x))
  y = x.copy()
  y[:, 5:] = 0.0  # changing frames >= 5 leaves latent frames 0..1 (input frames 0..4) alone
  _, other = model(jnp.asarray(y))
  np.testing.assert_allclose(posterior.mean[:, :2], other.mean[:, :2], atol=1e-6)
  again, _ = model.decode_with_head_input(posterior.mean)
  np.testing.assert_allclose(again, recon, atol=1e-6)


def test_validate_rejects_a_patch_size_below_one():
  with pytest.raises(ValueError, match="model.patch_size=0"):
    autoencoder.validate_model_config(tiny_promag(patch_size=0))


@pytest.mark.parametrize("policy, per_block", [("block_convs", True), ("level", False)])
def test_remat_policies_place_the_checkpoints_and_keep_the_gradients(
    tiny, tiny_loss_and_grads, jaxpr_equations, policy, per_block
):
  """"block_convs" checkpoints every res block (keeping conv outputs), "level" each of the
  4 encoder + 4 decoder levels; both give the plain model's loss and gradients."""
  remat_name = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name
  equations = _traced_loss(abstract_model(tiny_promag(remat=policy)), jaxpr_equations)
  remats = [e for e in equations if e.primitive.name == remat_name]
  assert len(remats) == (12 if per_block else 8)
  named = {e.params.get("name") for e in equations if e.primitive.name == "name"}
  assert remat_lib.CONV_OUTPUT in named
  model = numpy_initialised_model(tiny_promag(remat=policy))
  loss, grads = tiny_loss_and_grads
  loss_r, grads_r = loss_and_grads(model, video(3))
  assert abs(float(loss_r) - loss) <= 1e-6
  grads_r = _grad_leaves(grads_r)
  for name in grads:
    assert _max_err(grads_r[name], grads[name]) <= 1e-5, name


def test_blocks_without_a_level_remat_one_by_one_under_the_level_policy():
  # A grown level is only its blocks: "level" cannot wrap a level there, so each block is.
  assert [remat_lib.blocks_only_policy(v) for v in ("level", "block_convs", True, "")] == [
      "block", "block_convs", "block", ""
  ]


def test_an_unknown_remat_policy_is_refused_before_building():
  with pytest.raises(UserError, match="model.remat='convs' is unknown"):
    autoencoder.validate_model_config(tiny_promag(remat="convs"))
