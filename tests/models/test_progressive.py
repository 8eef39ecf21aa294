"""ProMAG growth: frame rules at 8x/16x, the identity-AdaNorm composition, causality, layout."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bootvae_jax import models
from bootvae_jax.models import autoencoder
from bootvae_jax.models import progressive

import tiny


def tiny_model_config(levels: int, mixing: str = "both", adanorm: str = "scale"):
  # A 3-level base (4x time, 4x space) keeps the tests fast; growth does not depend on depth.
  return tiny.tiny_model_config(
      (1, 1, 2), growth=dict(levels=levels, mixing=mixing, adanorm=adanorm)
  )


def _video(frames: int, size: int = 8, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (1, frames, size, size, 3), minval=-1, maxval=1)


def _randomise_adanorm(model, seed: int = 1) -> None:
  """Moves every AdaNorm away from its identity initialisation."""
  keys = iter(jax.random.split(jax.random.key(seed), 64))

  def move(path, variable):
    if "adanorm" not in map(str, path):
      return variable
    return variable.replace(0.3 * jax.random.normal(next(keys), variable.shape))

  nnx.update(model, nnx.map_state(move, nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "levels,factor,frames,latent_frames",
    [(1, 8, 17, 3), (1, 8, 9, 2), (2, 16, 17, 2), (2, 16, 33, 3)],
)
def test_shapes_and_frame_rule(levels, factor, frames, latent_frames):
  config = tiny_model_config(levels)
  assert models.compression_factors(config) == (factor, 4)
  model = models.build_model(config, rngs=nnx.Rngs(0))
  assert isinstance(model, progressive.GrownAutoencoder)
  assert (model.temporal_factor, model.spatial_factor) == (factor, 4)
  recon, posterior = model(_video(frames))
  assert posterior.mean.shape == (1, latent_frames, 2, 2, 4)
  assert recon.shape == (1, frames, 8, 8, 3)
  with pytest.raises(ValueError, match=rf"16 frames; a {factor}x causal model needs 1\+{factor}k"):
    model.encode(_video(16))


def test_base_config_builds_the_plain_autoencoder():
  model = models.build_model(tiny_model_config(0), rngs=nnx.Rngs(0))
  assert type(model) is autoencoder.VideoAutoencoder
  assert (model.temporal_factor, model.spatial_factor) == (4, 4)


def test_one_builder_and_one_compression_rule_for_grown_configs():
  """build_model is the builder; the base class refuses a grown config instead of silently
  building the base, and there is one (growth-aware) compression_factors."""
  config = tiny_model_config(2)
  assert models.compression_factors is autoencoder.compression_factors
  assert autoencoder.compression_factors(config) == (16, 4)
  with pytest.raises(ValueError, match=r"model.growth.levels=2 .*bootvae_jax.build_model"):
    autoencoder.VideoAutoencoder(config, rngs=nnx.Rngs(0))
  assert not hasattr(progressive, "compression_factors")
  assert not hasattr(progressive, "validate_model_config")
  # The default seed draws the same parameters every time (rbg key from autoencoder.init_rngs).
  a = nnx.state(models.build_model(tiny_model_config(1)), nnx.Param)
  b = nnx.state(models.build_model(tiny_model_config(1), seed=0), nnx.Param)
  for (path, x), (_, y) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
    np.testing.assert_array_equal(x[...], y[...], err_msg=str(path))


def test_grown_model_extends_the_base_through_its_constructor():
  """GrownAutoencoder runs VideoAutoencoder.__init__ (validation, factors, dtype) and only
  replaces the encoder/decoder and latent-conv seam: the lower level is a full base body."""
  config = tiny_model_config(1)
  config.dtype = "bfloat16"
  model = nnx.eval_shape(lambda: models.build_model(config))
  assert model.compute_dtype == jnp.bfloat16 and model.config is config
  assert model.quant_conv is None and model.post_quant_conv is None
  assert isinstance(model.encoder.lower, autoencoder.Encoder)
  assert model.encoder.lower.conv_out is None and model.decoder.lower.conv_in is None
  config.growth.mixing = "concat"
  with pytest.raises(ValueError, match="model.growth.mixing='concat'"):
    models.build_model(config)


@pytest.mark.parametrize("levels", [1, 2])
def test_level_remat_keeps_the_base_levels_and_remats_grown_blocks_one_by_one(levels):
  config = tiny_model_config(levels)
  config.remat = "level"
  model = nnx.eval_shape(lambda: models.build_model(config))
  encoder, decoder, grown = model.encoder, model.decoder, []
  while isinstance(encoder, progressive.GrownEncoder):
    grown += [encoder.remat, decoder.remat]
    encoder, decoder = encoder.lower, decoder.lower
  assert grown == ["block"] * (2 * levels)
  assert isinstance(encoder, autoencoder.Encoder)


@pytest.mark.parametrize(
    "field,value",
    [("mixing", "concat"), ("adanorm", "gain"), ("levels", -1), ("num_res_blocks", 0)],
)
def test_bad_growth_config_names_the_field(field, value):
  config = tiny_model_config(1)
  config.growth[field] = value
  with pytest.raises(ValueError, match=f"model.growth.{field}"):
    models.validate_model_config(config)


@pytest.mark.parametrize("mixing", ["both", "add", "adanorm", "none"])
def test_identity_adanorm_equals_hand_composition(mixing):
  """At initialisation AdaNorm is exactly 1·b: the level is the composition written out."""
  model = models.build_model(tiny_model_config(1, mixing), rngs=nnx.Rngs(0))
  x = _video(17)
  enc, dec, lower = model.encoder, model.decoder, model.encoder.lower
  branch_b = lower.body(x)
  branch_a = lower.body(x[:, ::2])
  assert branch_b.shape[1] == 5 and branch_a.shape[1] == 3  # 1+2k and 1+k frames (k = 2)
  h = enc.downsample(enc.block[0](branch_b))
  if mixing in ("add", "both"):
    h = h + branch_a
  moments = enc.conv_out(nnx.silu(enc.norm_out(h)))
  np.testing.assert_array_equal(model.encoder(x), moments)
  assert (model.encoder.adanorm is None) == (mixing in ("add", "none"))

  z = moments[..., :4]
  expected = dec.lower.body(dec.upsample(dec.block[0](dec.conv_in(z))))
  np.testing.assert_array_equal(model.decode(z), expected)
  recon, head_input = model.decode_with_head_input(z)
  np.testing.assert_allclose(recon, expected, atol=1e-6)
  assert model.decoder.conv_out is dec.lower.conv_out
  np.testing.assert_allclose(dec.lower.conv_out(head_input), expected, atol=1e-6)


def test_adanorm_formula():
  norm = progressive.AdaNorm(4, "scale_shift", rngs=nnx.Rngs(0))
  b = jax.random.normal(jax.random.key(1), (2, 5, 2, 2, 4))  # branch B: 1+2k frames
  a = jax.random.normal(jax.random.key(2), (2, 3, 3, 3, 4))  # branch A: 1+k frames
  np.testing.assert_array_equal(norm(b, a), b)  # identity at init
  w, v = jnp.eye(4) * 0.5, jnp.ones((4, 4)) * 0.1
  norm.scale_kernel.value, norm.shift_kernel.value = w, v
  m = a.mean(axis=(2, 3))
  p = m / jnp.sqrt(jnp.mean(m**2, -1, keepdims=True) + 1e-6)
  for j in range(5):
    expected = b[:, j] * (1 + p[:, j // 2] @ w)[:, None, None] + (p[:, j // 2] @ v)[:, None, None]
    np.testing.assert_allclose(norm(b, a)[:, j], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2])
def test_grown_model_is_causal(levels):
  """Latent frame j depends only on input frames <= r·j, AdaNorm and mixing included."""
  model = models.build_model(tiny_model_config(levels), rngs=nnx.Rngs(0))
  _randomise_adanorm(model)
  r = model.temporal_factor
  x = _video(1 + 2 * r)
  y = x.at[:, r + 1 :].set(_video(r, seed=3))  # change every frame after latent frame 1's span
  mean_x, mean_y = model.encode(x).mean, model.encode(y).mean
  np.testing.assert_allclose(mean_x[:, :2], mean_y[:, :2], atol=1e-5)
  assert float(jnp.abs(mean_x[:, 2] - mean_y[:, 2]).max()) > 1e-3
  z = mean_x + 0.0
  z2 = z.at[:, 2:].set(1.0)
  np.testing.assert_allclose(model.decode(z)[:, : 1 + r], model.decode(z2)[:, : 1 + r], atol=1e-5)


def _param_paths(model_config) -> set[str]:
  model = nnx.eval_shape(lambda: models.build_model(model_config, rngs=nnx.Rngs(0)))
  return {"/".join(map(str, p)) for p, _ in nnx.state(model, nnx.Param).flat_state()}


@pytest.mark.parametrize("levels", [1, 2])
def test_stage_layout_maps_onto_previous_stage(levels):
  """Every lower-level path of stage n maps onto a stage n-1 path; what is left over on the
  stage n-1 side is exactly its head (STAGE_EXCLUDE)."""
  previous = _param_paths(tiny_model_config(levels - 1))
  grown = _param_paths(tiny_model_config(levels))
  ((pattern, template),) = progressive.STAGE_MAPPING
  lower = {p for p in grown if re.match(progressive.LOWER_LEVEL, p)}
  mapped = {re.fullmatch(pattern, p).expand(template) for p in lower}
  assert mapped <= previous
  leftover = previous - mapped
  assert leftover and all(
      any(re.fullmatch(e, p) for e in progressive.STAGE_EXCLUDE) for p in leftover
  )
  new = grown - lower
  assert all(not p.split("/")[1] == "lower" for p in new)
  assert "encoder/adanorm/scale_kernel" in new and "decoder/conv_in/kernel" in new


def _from_lower_configs(mixing: str, use_quant_conv: bool):
  """A base with gated res blocks (as the experiment's) and its 8x and 16x growths started
  `from_lower`."""
  configs = []
  for levels in (0, 1, 2):
    config = tiny_model_config(levels, mixing)
    config.update(residual_gate=True, use_quant_conv=use_quant_conv)
    config.growth.init = "from_lower"
    configs.append(config)
  return configs


def _grow_from(previous, config):
  """`config`'s model with `previous`'s parameters restored by the stage restore rules."""
  from bootvae_jax import loading  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import config as training_config  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import stages  # pylint: disable=g-import-not-at-top

  stage = training_config.default_config()
  stage.model = config
  stages.use_stage_restore_rules(stage)
  excluded = stage.init_checkpoint.exclude
  source = {
      "/".join(map(str, p)): np.asarray(v[...])
      for p, v in nnx.state(previous, nnx.Param).flat_state()
      if not any(re.fullmatch(e, "/".join(map(str, p))) for e in excluded)
  }
  model = models.build_model(config, rngs=nnx.Rngs(1))
  filled, _ = loading.transfer_params(
      nnx.state(model, nnx.Param), source, stage.init_checkpoint.mapping, mapped_only=True
  )
  nnx.update(model, filled)
  return model


def _repeat_after_first(h):
  """Frames h0, h1, h1, h2, h2, ...: a depth-to-time upsample started as frame repetition."""
  return jnp.concatenate([h[:, :1], jnp.repeat(h[:, 1:], 2, axis=1)], axis=1)


def _lower_head(lower):
  """(encoder head layers, decoder conv_in, quant convs) of a model, as parameter dicts."""
  state = lambda m: {k: np.asarray(v[...]) for k, v in nnx.state(m, nnx.Param).flat_state()}
  modules = [lower.encoder.norm_out, lower.encoder.conv_out, lower.decoder.conv_in]
  modules += [lower.quant_conv, lower.post_quant_conv]
  return [state(m) for m in modules if m is not None]


# `both`: downsample started at zero (h = branch A); `adanorm`: started as frame selection.
@pytest.mark.parametrize("mixing,use_quant_conv", [("both", False), ("adanorm", True)])
def test_from_lower_starts_with_the_lower_head_and_frame_copying_resamplers(mixing, use_quant_conv):
  """growth.init='from_lower', stage II and III: the lower level's head (encoder norm_out /
  conv_out, decoder conv_in, quant convs) is restored into the new level, the new res blocks
  start as identities, the encoder's downsample as zero under additive mixing (the grown
  encoder is then exactly the lower level on frames 0, 2, 4, ...) else as frame selection, and
  the decoder's upsample as frame repetition."""
  base_config, config_8x, config_16x = _from_lower_configs(mixing, use_quant_conv)
  base = models.build_model(base_config, rngs=nnx.Rngs(0))
  grown_8x = _grow_from(base, config_8x)
  grown_16x = _grow_from(grown_8x, config_16x)
  for lower, grown, frames in ((base, grown_8x, 17), (grown_8x, grown_16x, 33)):
    heads = _lower_head(lower), _lower_head(grown)
    assert len(heads[0]) == len(heads[1]) == (5 if use_quant_conv else 3)
    for a, b in zip(*heads):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    x = _video(frames)
    encoder, decoder = grown.encoder, grown.decoder
    if mixing in ("add", "both"):
      expected = lower.encode(x[:, ::2]).mean
    else:
      moments = encoder.head(encoder.lower.body(x)[:, ::2])
      moments = moments if grown.quant_conv is None else grown.quant_conv(moments)
      expected = autoencoder.DiagonalGaussian.from_moments(moments).mean
    mean = grown.encode(x).mean
    np.testing.assert_allclose(mean, expected, atol=2e-5)
    h = decoder.conv_in(grown.decoder_input(mean))
    expected = decoder.lower.body(_repeat_after_first(h))
    np.testing.assert_allclose(grown.decode(mean), expected, atol=2e-5)


def test_from_lower_needs_its_restore_rules():
  from bootvae_jax.configs import promag_16x  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import config as training_config  # pylint: disable=g-import-not-at-top
  from bootvae_jax.training import stages  # pylint: disable=g-import-not-at-top

  config = promag_16x.get_config("from_lower")  # --config=configs/promag_16x.py:from_lower
  assert config.model.growth.init == "from_lower" and config.model.use_quant_conv
  assert set(progressive.HEAD_MAPPING) <= set(config.init_checkpoint.mapping)
  assert config.init_checkpoint.exclude == ()
  training_config._validate_growth_restore(config)  # pylint: disable=protected-access
  config.init_checkpoint.mapping = progressive.STAGE_MAPPING  # as if growth.init changed later
  with pytest.raises(ValueError, match=r"configs/promag_8x.py:from_lower"):
    training_config._validate_growth_restore(config)  # pylint: disable=protected-access
  stages.use_stage_restore_rules(config)
  training_config._validate_growth_restore(config)  # pylint: disable=protected-access
  assert stages.direct_baseline(config).model.growth.init == "fresh"
