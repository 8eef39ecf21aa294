"""diffusers AutoencoderKL folders → ImageVAE: float32 parity with diffusers itself (≤ 1e-4).

Each test builds a tiny random `AutoencoderKL` with the pinned diffusers (requirements-test.txt),
`save_pretrained`s it and imports the folder.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from bootvae_jax.interop import diffusers_vae  # pylint: disable=g-import-not-at-top
from bootvae_jax.interop import load_diffusers_vae  # pylint: disable=g-import-not-at-top
from bootvae_jax.models import image_vae  # pylint: disable=g-import-not-at-top


def _random_vae(tmp_path, seed=0, **kw):
  """A tiny AutoencoderKL with every parameter (norms included) random, saved to tmp_path."""
  torch.manual_seed(seed)
  levels = kw.pop("levels", 3)
  config = dict(
      block_out_channels=(8, 16, 16)[:levels],
      layers_per_block=1,
      latent_channels=4,
      norm_num_groups=4,
      down_block_types=("DownEncoderBlock2D",) * levels,
      up_block_types=("UpDecoderBlock2D",) * levels,
      sample_size=16,
  )
  config.update(kw)
  vae = diffusers.AutoencoderKL(**config).eval()
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if "norm" in name:  # GroupNorm: scale around 1, bias around 0 (defaults would hide a swap)
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
  vae.save_pretrained(tmp_path)
  return vae


def _video(shape, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _nhwc(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # SD 1.x/2.x layout, attention
        dict(
            use_quant_conv=False,
            use_post_quant_conv=False,
            latent_channels=8,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            mid_block_add_attention=False,
        ),  # SD3-like
    ],
)
def test_parity_with_diffusers(tmp_path, kw):
  vae = _random_vae(tmp_path, **kw)
  model = load_diffusers_vae(tmp_path)
  assert isinstance(model, image_vae.ImageVAE)
  assert model.config.scaling_factor == pytest.approx(kw.get("scaling_factor", 0.18215))
  assert model.config.shift_factor == pytest.approx(kw.get("shift_factor", 0.0))
  images = _video((2, 16, 16, 3))
  with torch.no_grad():
    dist = vae.encode(_nchw(images)).latent_dist
    z = dist.mean
    decoded = vae.decode(z).sample
  posterior = model.encode_images(jnp.asarray(images))
  np.testing.assert_allclose(posterior.mean, _nhwc(dist.mean), atol=1e-4)
  np.testing.assert_allclose(posterior.logvar, _nhwc(dist.logvar), atol=1e-4)
  np.testing.assert_allclose(model.decode_images(jnp.asarray(_nhwc(z))), _nhwc(decoded), atol=1e-4)
  # A video goes through frame by frame: the same numbers for each frame.
  video = np.stack([images, images[::-1]], axis=1)  # (2, 2, 16, 16, 3)
  recon, _ = model(jnp.asarray(video))
  np.testing.assert_allclose(recon[:, 0], _nhwc(decoded), atol=1e-4)
  np.testing.assert_allclose(recon[1, 1], _nhwc(decoded)[0], atol=1e-4)


def test_legacy_attention_names_load(tmp_path):
  """Older diffusers checkpoints (sd-vae-ft-mse) name the attention query/key/value/proj_attn."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top

  _random_vae(tmp_path, levels=2)
  path = tmp_path / "diffusion_pytorch_model.safetensors"
  tensors = load_file(str(path))
  renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  legacy = {}
  for key, value in tensors.items():
    for new, old in renames.items():
      key = key.replace(f".{new}.", f".{old}.")
    legacy[key] = value
  assert any(".proj_attn." in k for k in legacy)
  reference = load_diffusers_vae(tmp_path)
  save_file(legacy, str(path))
  model = load_diffusers_vae(tmp_path)
  x = jnp.asarray(_video((1, 1, 8, 8, 3)))
  np.testing.assert_array_equal(model(x)[0], reference(x)[0])


def test_mismatched_folder_lists_every_problem(tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top

  _random_vae(tmp_path, levels=2)
  path = tmp_path / "diffusion_pytorch_model.safetensors"
  tensors = load_file(str(path))
  tensors.pop("decoder.conv_out.bias")
  tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
  save_file(tensors, str(path))
  with pytest.raises(ValueError) as e:
    load_diffusers_vae(tmp_path)
  assert "missing keys (1): decoder.conv_out.bias" in str(e.value)
  assert "unexpected keys (1): encoder.extra.weight" in str(e.value)


def test_unsupported_config_is_named(tmp_path):
  _random_vae(tmp_path, levels=2)
  config = json.loads((tmp_path / "config.json").read_text())
  config["act_fn"] = "gelu"
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="act_fn='gelu' is not supported"):
    load_diffusers_vae(tmp_path)


def test_key_rule_matches_diffusers_names(tmp_path):
  """Every diffusers key of a 3-level VAE is produced by the rule exactly once."""
  vae = _random_vae(tmp_path)
  model = load_diffusers_vae(tmp_path)
  from flax import nnx  # pylint: disable=g-import-not-at-top

  ours = [
      diffusers_vae.diffusers_key_candidates(p, 3)[0]
      for p, _ in nnx.state(model, nnx.Param).flat_state()
  ]
  assert sorted(ours) == sorted(vae.state_dict())
