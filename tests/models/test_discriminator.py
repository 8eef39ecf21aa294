"""PatchDiscriminator3D: shapes, gradients under jit, no batch coupling, logical axes.

One model is built per module, from an 'rbg' key: on CPU, threefry initialisation compiles
a PRNG program per kernel shape (~15 s for this model on 2 busy cores, vs ~2 s with rbg).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bootvae_jax.losses import hinge_d_loss
from bootvae_jax.models.discriminator import PatchDiscriminator3D
from bootvae_jax.models.discriminator import output_size

CLIP_SHAPE = (2, 9, 32, 32, 3)
forward = nnx.jit(lambda model, x: model(x))


def _rngs():
  return nnx.Rngs(jax.random.key(0, impl='rbg'))


def _make(**kwargs):
  # No mesh needed: axis names are metadata only (no eager sharding), as in models/layers.py.
  return PatchDiscriminator3D(**kwargs, rngs=_rngs())


def _abstract_logits(shape, **kwargs):
  """Output shape of a freshly built model, without initialising or running anything."""
  return nnx.eval_shape(
      lambda: PatchDiscriminator3D(**kwargs, rngs=nnx.Rngs(0))(jnp.zeros(shape))
  ).shape


@pytest.fixture(scope='module')
def disc():
  return _make(in_channels=3, base_channels=8, num_layers=3)


@pytest.fixture(scope='module')
def clips():
  rng = np.random.default_rng(1)
  real = rng.uniform(-1, 1, CLIP_SHAPE).astype(np.float32)
  fake = np.clip(real + 0.3 * rng.normal(size=CLIP_SHAPE), -1, 1).astype(np.float32)
  return jnp.asarray(real), jnp.asarray(fake)


def test_output_shape_of_a_tiny_clip(disc, clips):
  logits = forward(disc, clips[0])
  # T: 9 -> 5 -> 3 -> 2 -> 3 -> 4; H, W: 32 -> 17 -> 9 -> 5 -> 6 -> 7.
  assert logits.shape == (2, 4, 7, 7, 1) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize(
    'shape, num_layers, expected',
    [
        ((2, 9, 32, 32, 3), 3, (2, 4, 7, 7, 1)),
        ((1, 1, 16, 24, 3), 3, (1, 3, 5, 6, 1)),  # a single frame (image) still scores
        ((1, 17, 64, 64, 3), 4, (1, 4, 7, 7, 1)),  # CV-VAE's 4-layer setting
        ((1, 5, 16, 16, 3), 1, (1, 5, 11, 11, 1)),
    ],
)
def test_output_shapes(shape, num_layers, expected):
  assert _abstract_logits(shape, base_channels=8, num_layers=num_layers) == expected
  assert expected[1:4] == tuple(output_size(n, num_layers) for n in shape[1:4])


def test_channel_widths_follow_taming_multipliers():
  model = nnx.eval_shape(
      lambda: PatchDiscriminator3D(base_channels=8, num_layers=4, rngs=nnx.Rngs(0))
  )
  widths = [layer.conv.kernel.shape[-1] for layer in model.layers]
  assert widths == [8, 16, 32, 64, 64, 1]  # base * min(2**n, 8), then one logit


def test_grad_through_discriminator_under_jit(disc, clips):
  graphdef, params = nnx.split(disc, nnx.Param)

  @jax.jit
  def loss_and_grads(params, real, fake):
    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      return hinge_d_loss(model(real), model(fake))

    return jax.value_and_grad(loss_fn)(params)

  loss, grads = loss_and_grads(params, *clips)
  assert np.isfinite(float(loss))
  leaves = jax.tree_util.tree_leaves(grads)
  assert len(leaves) == 5 + 3 * 2 + 2  # 5 conv kernels, 3 norms (scale, bias), 2 conv biases
  for g in leaves:
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_no_coupling_across_the_batch(disc, clips):
  # GroupNorm, not BatchNorm: one clip's logits do not depend on the other clips.
  real, fake = clips
  with_real = forward(disc, real)
  with_other = forward(disc, jnp.concatenate([real[:1], fake[1:]]))
  np.testing.assert_allclose(with_real[0], with_other[0], rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(with_real[1] - with_other[1]).max()) > 1e-4


def test_norm_none_and_bad_norm():
  model = nnx.eval_shape(
      lambda: PatchDiscriminator3D(base_channels=8, num_layers=2, norm='none', rngs=nnx.Rngs(0))
  )
  assert all(layer.norm is None for layer in model.layers)
  with pytest.raises(ValueError, match='norm'):
    _make(base_channels=8, norm='batch')


def test_params_carry_logical_axis_names(disc):
  specs = nnx.get_partition_spec(nnx.state(disc, nnx.Param))
  flat = {
      jax.tree_util.keystr(path): tuple(spec)
      for path, spec in jax.tree_util.tree_flatten_with_path(specs)[0]
  }
  kernel = ('conv_t', 'conv_h', 'conv_w', 'conv_in', 'conv_out')
  last = f'[{len(disc.layers) - 1}]'
  for path, spec in flat.items():
    if "['kernel']" in path:
      want = kernel
      if '[0]' in path:  # RGB input channels stay replicated
        want = kernel[:3] + (None, 'conv_out')
      if last in path:  # the single logit channel stays replicated
        want = kernel[:4] + (None,)
    else:
      want = (None,) if last in path else ('conv_out',)
    assert spec == want, (path, spec)
  assert len(flat) == 13


def test_runs_sharded_on_a_mesh_by_logical_rules(disc, clips):
  # What the trainer does: logical names -> mesh axes by config rules, params placed there.
  mesh = jax.make_mesh((2, 2), ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (
      ('conv_t', None),
      ('conv_h', None),
      ('conv_w', None),
      ('conv_in', None),
      ('conv_out', 'fsdp'),
  )
  graphdef, params = nnx.split(disc, nnx.Param)
  with nnx.logical_axis_rules(rules):
    shardings = nnx.get_named_sharding(params, mesh)
  params = jax.device_put(params, shardings)
  spec = jax.sharding.PartitionSpec
  assert params['layers'][1]['conv']['kernel'][...].sharding.spec == spec(
      None, None, None, None, 'fsdp'
  )
  assert params['layers'][1]['norm']['scale'][...].sharding.spec == spec('fsdp')
  assert params['layers'][len(disc.layers) - 1]['conv']['kernel'][...].sharding.is_fully_replicated
  batch = jax.device_put(clips[0], jax.sharding.NamedSharding(mesh, spec('data')))
  logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, batch)
  np.testing.assert_allclose(logits, forward(disc, clips[0]), rtol=1e-4, atol=1e-5)
