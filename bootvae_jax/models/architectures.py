"""Model configs for the architectures bootvae_jax ships: each is data, not a model class.

* `promag_base`: our MAGVIT-v2-style causal base (stage I of ProMAG): 4x time, 8x space,
  per-frame mean-free norms everywhere, so it is truly causal and streams exactly.
* `cvvae`: the released CV-VAE layout, from the official `CVVAEModel` constructor arguments.
* `odvae`: the released OD-VAE (Open-Sora-Plan v1.2 CausalVAE) layout, from the official
  `CausalVAEModel` constructor arguments; `odvae_variant(n)` gives OD-VAE's four variants.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections

from bootvae_jax.cli import UserError
from bootvae_jax.models.autoencoder import default_model_config


def promag_base(
    *,
    z_dim: int = 8,
    base_channels: int = 64,
    channel_multipliers=(1, 2, 2, 4),
    num_res_blocks: int = 2,
    num_groups: int = 32,
) -> ml_collections.ConfigDict:
  """The ProMAG stage-I tokenizer: 4x temporal, 8x spatial, `z_dim` latent channels."""
  config = default_model_config()
  config.name = f"promag_base_z{z_dim}"
  config.base_channels = base_channels
  config.channel_multipliers = tuple(channel_multipliers)
  config.num_groups = num_groups
  config.z_channels = config.latent_channels = z_dim
  config.encoder.num_res_blocks = num_res_blocks
  config.decoder.num_res_blocks = num_res_blocks + 1
  return config


# ----------------------------------------------------------------------------------------------
# Released layouts from the official constructor arguments.


def _unsupported(model: str, key: str, value: Any, supported) -> UserError:
  return UserError(
      f"{model}: {key}={value!r} is not supported by the converter (supported:" f" {supported})"
  )


def cvvae(kwargs: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The CV-VAE layout (`AILab-CVC/CV-VAE`, `CVVAEModel`) for any width / depth.

  See tests/fixtures/cvvae/README.md: 3D res blocks with clip-wide GroupNorm (eps 1e-5),
  conv2 per frame when `half_3d`; causal encoder, centred (non-causal) decoder; encoder
  downsample in time at even levels, decoder upsample in time at odd levels; no quant convs.
  """
  k = dict(kwargs)
  mult = tuple(k.get("ch_mult", (1, 2, 4, 4)))
  expected = {
      "time_n_compress": 4,
      "spatial_n_compress": 8,
      "use_3d_conv": True,
      "causal_encoder": True,
      "attn_resolutions": [],
      "encoder_attn_type": "vanilla-xformers",
      "decoder_attn_type": "spatial-temporal-xformer",
  }
  for key, value in expected.items():
    if key in k and (list(k[key]) if isinstance(value, list) else k[key]) != value:
      raise _unsupported("cvvae", key, k[key], value)
  if len(mult) != 4:
    raise _unsupported("cvvae", "ch_mult", mult, "4 levels")
  block = "half3d" if k.get("half_3d", True) else "3d"
  levels = len(mult)
  config = default_model_config()
  config.name = "cvvae"
  config.in_channels = k.get("in_channels", 3)
  config.out_channels = k.get("out_ch", 3)
  config.base_channels = k.get("ch", 128)
  config.channel_multipliers = mult
  config.num_groups = 32
  config.norm_eps = 1e-5
  config.z_channels = config.latent_channels = k.get("z_channels", 4)
  config.double_z = k.get("double_z", True)
  config.use_quant_conv = False
  config.scaling_factor = k.get("scaling_factor", 0.18215)
  num_res_blocks = k.get("num_res_blocks", 2)
  enc, dec = config.encoder, config.decoder
  enc.update(
      conv_in="3d",
      num_res_blocks=num_res_blocks,
      blocks=(block,) * levels,
      downsample=tuple(
          "" if i == levels - 1 else ("conv3d:st" if i % 2 == 0 else "conv3d:s")
          for i in range(levels)
      ),
      time_padding="causal",
      norm="groupnorm_clip",
      mid_block=block,
      mid_attention="spatial",
      attention_norm="groupnorm_frame",
  )
  dec.update(
      conv_in="3d",
      num_res_blocks=num_res_blocks + 1,
      blocks=(block,) * levels,
      upsample=tuple(
          "" if i == 0 else ("nearest3d:st" if i % 2 == 1 else "nearest3d:s") for i in range(levels)
      ),
      time_padding="causal" if k.get("causal_decoder", False) else "centred",
      norm="groupnorm_clip",
      mid_block=block,
      mid_attention="spatiotemporal",
      attention_norm="groupnorm_frame",
  )
  return config


_ODVAE_BLOCKS = {"ResnetBlock2D": "2d", "ResnetBlock3D": "3d"}
_ODVAE_DOWN = {"": "", "Downsample": "conv2d:s", "Spatial2xTime2x3DDownsample": "conv3d:st"}
_ODVAE_UP = {
    "": "",
    "SpatialUpsample2x": "nearest2d:s",
    "Spatial2xTime2x3DUpsample": "trilinear:st",
}
_ODVAE_CONV = {"Conv2d": "2d", "CausalConv3d": "3d"}


def _lookup(table: Mapping[str, str], key: str, value: str) -> str:
  if value not in table:
    raise _unsupported("odvae", key, value, sorted(table))
  return table[value]


def odvae(kwargs: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The OD-VAE layout (Open-Sora-Plan v1.2 `CausalVAEModel`) for any width / depth.

  See tests/fixtures/odvae/README.md: everything causal in time; clip-wide GroupNorm
  (eps 1e-6) in 3D blocks, the attention and the output norms; per-frame 2D blocks.
  """
  k = dict(kwargs)
  defaults = odvae_released_kwargs()
  k = {**defaults, **k}
  for key in ("encoder_temporal_downsample", "decoder_temporal_upsample"):
    if any(k[key]):
      raise _unsupported("odvae", key, k[key], "all empty")
  for key in ("encoder_attention", "decoder_attention"):
    if k[key] != "AttnBlock3DFix":
      raise _unsupported("odvae", key, k[key], "AttnBlock3DFix")
  for key in ("encoder_mid_resnet", "decoder_mid_resnet"):
    _lookup({"ResnetBlock3D": "3d"}, key, k[key])
  for key in ("encoder_conv_out", "decoder_conv_out", "decoder_conv_in", "q_conv"):
    _lookup({"CausalConv3d": "3d"}, key, k[key])
  if k["attn_resolutions"]:
    raise _unsupported("odvae", "attn_resolutions", k["attn_resolutions"], "[]")
  config = default_model_config()
  config.name = "odvae"
  config.base_channels = k["hidden_size"]
  config.channel_multipliers = tuple(k["hidden_size_mult"])
  config.num_groups = 32
  config.norm_eps = 1e-6
  config.z_channels = k["z_channels"]
  config.double_z = k["double_z"]
  config.latent_channels = k["embed_dim"]
  config.use_quant_conv = bool(k["use_quant_layer"])
  config.scaling_factor = 0.18215  # applied by OSP's pipeline wrapper, not inside the model
  config.encoder.update(
      conv_in=_lookup(_ODVAE_CONV, "encoder_conv_in", k["encoder_conv_in"]),
      num_res_blocks=k["num_res_blocks"],
      blocks=tuple(
          _lookup(_ODVAE_BLOCKS, "encoder_resnet_blocks", b) for b in k["encoder_resnet_blocks"]
      ),
      downsample=tuple(
          _lookup(_ODVAE_DOWN, "encoder_spatial_downsample", d)
          for d in k["encoder_spatial_downsample"]
      ),
      time_padding="causal",
      norm="groupnorm_clip",
      mid_block="3d",
      mid_attention="spatial",
      attention_norm="groupnorm_clip",
  )
  config.decoder.update(
      conv_in="3d",
      num_res_blocks=k["num_res_blocks"] + 1,
      blocks=tuple(
          _lookup(_ODVAE_BLOCKS, "decoder_resnet_blocks", b) for b in k["decoder_resnet_blocks"]
      ),
      upsample=tuple(
          _lookup(_ODVAE_UP, "decoder_spatial_upsample", u) for u in k["decoder_spatial_upsample"]
      ),
      time_padding="causal",
      norm="groupnorm_clip",
      mid_block="3d",
      mid_attention="spatial",
      attention_norm="groupnorm_clip",
  )
  return config


def odvae_released_kwargs() -> dict[str, Any]:
  """The constructor arguments of the released OD-VAE (Open-Sora-Plan v1.2.0) = variant 4."""
  return dict(
      hidden_size=128,
      z_channels=4,
      hidden_size_mult=[1, 2, 4, 4],
      attn_resolutions=[],
      dropout=0.0,
      resolution=256,
      double_z=True,
      embed_dim=4,
      num_res_blocks=2,
      q_conv="CausalConv3d",
      encoder_conv_in="Conv2d",
      encoder_conv_out="CausalConv3d",
      encoder_attention="AttnBlock3DFix",
      encoder_resnet_blocks=["ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"],
      encoder_spatial_downsample=[
          "Downsample",
          "Spatial2xTime2x3DDownsample",
          "Spatial2xTime2x3DDownsample",
          "",
      ],
      encoder_temporal_downsample=["", "", "", ""],
      encoder_mid_resnet="ResnetBlock3D",
      decoder_conv_in="CausalConv3d",
      decoder_conv_out="CausalConv3d",
      decoder_attention="AttnBlock3DFix",
      decoder_resnet_blocks=["ResnetBlock3D"] * 4,
      decoder_spatial_upsample=[
          "",
          "SpatialUpsample2x",
          "Spatial2xTime2x3DUpsample",
          "Spatial2xTime2x3DUpsample",
      ],
      decoder_temporal_upsample=["", "", "", ""],
      decoder_mid_resnet="ResnetBlock3D",
      use_quant_layer=True,
  )


def cvvae_released_kwargs() -> dict[str, Any]:
  """The constructor arguments of the released CV-VAE (SD1.x/2.x latent, 4 channels)."""
  return dict(
      double_z=True,
      z_channels=4,
      in_channels=3,
      out_ch=3,
      ch=128,
      ch_mult=[1, 2, 4, 4],
      num_res_blocks=2,
      attn_resolutions=[],
      dropout=0.0,
      use_3d_conv=True,
      half_3d=True,
      causal_encoder=True,
      causal_decoder=False,
      encoder_attn_type="vanilla-xformers",
      decoder_attn_type="spatial-temporal-xformer",
      scaling_factor=0.18215,
      time_n_compress=4,
      spatial_n_compress=8,
  )


def odvae_variant(variant: int, **overrides) -> ml_collections.ConfigDict:
  """OD-VAE's four variants (our reading of arXiv 2409.01199, see the paper).

  V1: every block 3D-causal; V2: 2D blocks at the two highest-resolution levels of encoder and
  decoder; V3: 2D at the highest-resolution level of the encoder only; V4: the released layout
  (2D blocks at encoder levels 0–1, all-3D decoder).
  """
  k = {**odvae_released_kwargs(), **overrides}
  three, two = "ResnetBlock3D", "ResnetBlock2D"
  if variant == 1:
    k.update(
        encoder_conv_in="CausalConv3d",
        encoder_resnet_blocks=[three] * 4,
        decoder_resnet_blocks=[three] * 4,
    )
  elif variant == 2:
    k.update(
        encoder_resnet_blocks=[two, two, three, three],
        decoder_resnet_blocks=[two, two, three, three],
    )
  elif variant == 3:
    k.update(encoder_resnet_blocks=[two, three, three, three], decoder_resnet_blocks=[three] * 4)
  elif variant != 4:
    raise UserError(f"OD-VAE has variants 1-4, got {variant}")
  config = odvae(k)
  config.name = f"odvae_v{variant}"
  return config


# Keys an official config.json may hold besides the layout kwargs above (underscore-prefixed
# keys such as `_class_name` aside): CV-VAE's constructor also takes runtime switches (tiling,
# upcasting; no parameters depend on them); released OD-VAE files also carry training
# settings and channel counts its v1.2 constructor does not take (it hard-codes 3 channels),
# which the official loader ignores, as we do.
_OFFICIAL_EXTRA_KEYS = {
    "cvvae": (
        "force_upcast",
        "en_de_n_frames_a_time",
        "tile_spatial_size",
        "num_video_frames",
        "tile_overlap_ratio",
        "reshape_z_dim_to_4",
        "reshape_x_dim_to_4",
    ),
    "odvae": ("lr", "loss_type", "loss_params", "in_channels", "out_channels"),
}


def official_config_keys(kind: str) -> tuple[str, ...]:
  """Every key the config of a released `kind` ("cvvae" or "odvae") may hold; any other key
  (e.g. a misspelt `hiden_size`) would otherwise be silently ignored."""
  released = {"cvvae": cvvae_released_kwargs, "odvae": odvae_released_kwargs}[kind]()
  return tuple(released) + _OFFICIAL_EXTRA_KEYS[kind]


# ----------------------------------------------------------------------------------------------
# The inverse: which released layout a model config is, with its official constructor kwargs.

# Fields that do not change the architecture: how it runs, how it starts, what it is called.
_NON_ARCHITECTURE = ("name", "dtype", "remat", "kernel_init", "output_init_scale")


def _architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
  fields = json.loads(config.to_json())
  if not (fields.get("growth") or {}).get("levels", 0):
    fields.pop("growth", None)
  return {k: v for k, v in fields.items() if k not in _NON_ARCHITECTURE}


def _invert(table: Mapping[str, str], value: str) -> str:
  return {v: k for k, v in table.items()}[value]


def _cvvae_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {
      **cvvae_released_kwargs(),
      "in_channels": config.in_channels,
      "out_ch": config.out_channels,
      "ch": config.base_channels,
      "ch_mult": list(config.channel_multipliers),
      "num_res_blocks": config.encoder.num_res_blocks,
      "z_channels": config.z_channels,
      "double_z": config.double_z,
      "half_3d": config.encoder.blocks[0] == "half3d",
      "causal_decoder": config.decoder.time_padding == "causal",
      "scaling_factor": config.scaling_factor,
  }


def _odvae_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  enc, dec = config.encoder, config.decoder
  return {
      **odvae_released_kwargs(),
      "hidden_size": config.base_channels,
      "hidden_size_mult": list(config.channel_multipliers),
      "z_channels": config.z_channels,
      "double_z": config.double_z,
      "embed_dim": config.latent_channels,
      "num_res_blocks": enc.num_res_blocks,
      "use_quant_layer": config.use_quant_conv,
      "encoder_conv_in": _invert(_ODVAE_CONV, enc.conv_in),
      "encoder_resnet_blocks": [_invert(_ODVAE_BLOCKS, b) for b in enc.blocks],
      "encoder_spatial_downsample": [_invert(_ODVAE_DOWN, d) for d in enc.downsample],
      "decoder_resnet_blocks": [_invert(_ODVAE_BLOCKS, b) for b in dec.blocks],
      "decoder_spatial_upsample": [_invert(_ODVAE_UP, u) for u in dec.upsample],
  }


OFFICIAL_CLASSES = {"cvvae": "CVVAEModel", "odvae": "CausalVAEModel"}


def official_layout(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """(kind, official constructor kwargs) of a model config that is a released layout.

  The inverse of `cvvae` / `odvae`: `CONFIG[kind](kwargs)` rebuilds the same architecture.
  Raises ValueError when the config is neither a CV-VAE nor an OD-VAE layout (e.g. the ProMAG
  base or a grown model), naming the first field that differs from the nearest layout.
  """
  target = _architecture(config)
  differences = {}
  for kind, (invert, build) in {
      "cvvae": (_cvvae_kwargs, cvvae),
      "odvae": (_odvae_kwargs, odvae),
  }.items():
    try:
      kwargs = invert(config)
      rebuilt = _architecture(build(kwargs))
    except (KeyError, IndexError, ValueError) as e:  # a value the layout has no name for
      differences[kind] = [f"{type(e).__name__}: {e}"]
      continue
    differences[kind] = sorted(
        k for k in set(target) | set(rebuilt) if target.get(k) != rebuilt.get(k)
    )
    if not differences[kind]:
      return kind, kwargs
  raise UserError(
      f"model config {config.get('name')!r} is neither the CV-VAE nor the OD-VAE layout"
      f" (differs from CV-VAE in {differences['cvvae'][:3]}, from OD-VAE in"
      f" {differences['odvae'][:3]}); export it in the bootvae_jax format instead"
  )
