"""A plain-PyTorch mirror of bootvae_jax's video autoencoders, for exported models.

    from torch_model import load_exported
    vae = load_exported("exported/")             # torch.nn.Module, eval mode, float32
    mean, logvar = vae.encode(video)             # video: (B, C, T, H, W) in [-1, 1]
    recon = vae.decode(mean)                     # (B, C, T, H, W)

This file imports torch and safetensors, never jax: copy it alone into a PyTorch project. It
builds every model bootvae_jax's config language describes (the ProMAG base and its grown 8x /
16x levels in every mixing mode, the CV-VAE and OD-VAE layouts) from the `model` entry of an
exported `config.json` (written by `python -m bootvae_jax.export`), with the module tree and
parameter names of the JAX model (`kernel`/`scale` → `weight`), so the exported
`model.safetensors` loads with `load_state_dict(strict=True)`. Every formula here mirrors one
in `bootvae_jax/models/` (layers.py, blocks.py, autoencoder.py, progressive.py); the tests
check each against JAX to 1e-4.

Every kind a config names (norm, res block, resampler, attention) is one entry of `NORMS`,
`RES_BLOCKS`, `RESAMPLERS` or `ATTENTIONS`, under the name the JAX registry gives it
(`models/layers.NORM_KINDS`, `models/blocks.py`); tests/models/test_registry.py fails if one
has a kind the other lacks.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

EXPORT_FORMAT = "bootvae_jax"


# ----------------------------------------------------------------------------------------------
# Layers (models/layers.py). Video is (B, C, T, H, W).


def _time_padding(kind: str, kt: int) -> tuple[int, int, str]:
  return {
      "causal": (kt - 1, 0, "replicate"),
      "centred": (kt // 2, kt // 2, "zeros"),
      "replicate_both": (kt // 2, kt // 2, "replicate"),
      "none": (0, 0, "zeros"),
  }[kind]


class Conv3d(nn.Module):
  """layers.Conv3d: time padding (causal / centred / replicate_both), zero padding in space
  (`same`, or `bottom_right` for the strided downsamplers), stride. Weight (out, in, kt, kh, kw);
  with kt == 1 it is a 2D conv applied to every frame."""

  def __init__(
      self,
      cin: int,
      cout: int,
      kernel_size=(3, 3, 3),
      *,
      stride=(1, 1, 1),
      time_padding: str = "causal",
      spatial_padding: str = "same",
  ):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(cout, cin, *kernel_size))
    self.bias = nn.Parameter(torch.zeros(cout))
    self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
    self.time_padding = time_padding if kernel_size[0] > 1 else "none"
    self.spatial_padding = spatial_padding

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    kt, kh, kw = self.kernel_size
    front, back, mode = _time_padding(self.time_padding, kt)
    if mode == "replicate":  # first / last frame repeated
      x = torch.cat([x[:, :, :1]] * front + [x] + [x[:, :, -1:]] * back, dim=2)
      front = back = 0
    if self.spatial_padding == "bottom_right":
      x = F.pad(x, (0, 1, 0, 1))
      ph = pw = 0
    elif self.spatial_padding == "same":
      ph, pw = kh // 2, kw // 2
    else:
      ph = pw = 0
    # Zero time padding is symmetric (centred), so the conv pads it itself.
    return F.conv3d(x, self.weight, self.bias, self.stride, (front, ph, pw))


def _frame_groups(x: torch.Tensor, num_groups: int) -> torch.Tensor:
  """(B, C, T, H, W) → (B, G, C/G, T, H, W): statistics over axes (2, 4, 5) are per frame."""
  b, c, t, h, w = x.shape
  return x.reshape(b, num_groups, c // num_groups, t, h, w)


def _channel_affine(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
  shape = (1, weight.shape[0], 1, 1, 1)
  return y * weight.view(shape) + bias.view(shape)


def _groupnorm_frame(x, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
  g = _frame_groups(x, num_groups)
  var, mean = torch.var_mean(g, dim=(2, 4, 5), unbiased=False, keepdim=True)
  return _channel_affine(((g - mean) * torch.rsqrt(var + eps)).reshape(x.shape), weight, bias)


def _rmsnorm_frame(x, weight, bias, num_groups: int, eps: float) -> torch.Tensor:
  """ProMAG's mean-free group RMS per frame."""
  g = _frame_groups(x, num_groups)
  y = g * torch.rsqrt(g.square().mean(dim=(2, 4, 5), keepdim=True) + eps)
  return _channel_affine(y.reshape(x.shape), weight, bias)


# Norm kinds (layers.NORM_KINDS): (x, weight, bias, num_groups, eps) → normalised x.
NORMS = {
    # Statistics over C/G·T·H·W: the released CV-VAE / OD-VAE 3D blocks.
    "groupnorm_clip": lambda x, weight, bias, num_groups, eps: F.group_norm(
        x, num_groups, weight, bias, eps
    ),
    "groupnorm_frame": _groupnorm_frame,
    "rmsnorm_frame": _rmsnorm_frame,
    # Over the last axis of channels-last tokens (the temporal attention's).
    "layernorm": lambda x, weight, bias, num_groups, eps: F.layer_norm(
        x, x.shape[-1:], weight, bias, eps
    ),
}


class Norm(nn.Module):
  """layers.Norm: one of `NORMS` with a per-channel affine."""

  def __init__(self, channels: int, kind: str, *, num_groups: int = 32, eps: float = 1e-6):
    super().__init__()
    if kind not in NORMS:
      raise ValueError(f"unknown norm {kind!r}; known: {tuple(NORMS)}")
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))
    self.kind, self.num_groups, self.eps = kind, num_groups, eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return NORMS[self.kind](x, self.weight, self.bias, self.num_groups, self.eps)


def _per_frame(kind: str) -> str:
  return "groupnorm_frame" if kind == "groupnorm_clip" else kind


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
  """softmax(q kᵀ / sqrt(C)) v over axis -2; q, k, v: (..., N, C)."""
  return F.scaled_dot_product_attention(q, k, v)


class SpatialAttention(nn.Module):
  """Per-frame self-attention among the H·W positions (layers.SpatialAttention)."""

  def __init__(
      self, channels: int, *, norm: str, num_groups: int, eps: float, residual: bool = True
  ):
    super().__init__()
    self.norm = Norm(channels, norm, num_groups=num_groups, eps=eps)
    self.q, self.k, self.v, self.proj_out = (
        Conv3d(channels, channels, (1, 1, 1)) for _ in range(4)
    )
    self.residual = residual

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    hn = self.norm(x)
    q, k, v = (m(hn).reshape(b, c, t, h * w).permute(0, 2, 3, 1) for m in (self.q, self.k, self.v))
    a = _attention(q, k, v).permute(0, 3, 1, 2).reshape(b, c, t, h, w)
    out = self.proj_out(a)
    return x + out if self.residual else out


class SpatioTemporalAttention(nn.Module):
  """CV-VAE's decoder mid attention: spatial (no residual) then attention over time per pixel,
  one residual around both (layers.SpatioTemporalAttention)."""

  def __init__(self, channels: int, *, norm: str, num_groups: int, eps: float):
    super().__init__()
    self.spatial = SpatialAttention(
        channels, norm=norm, num_groups=num_groups, eps=eps, residual=False
    )
    self.norm_t = Norm(channels, "layernorm", eps=1e-5)
    self.q_t, self.k_t, self.v_t, self.proj_out_t = (
        nn.Linear(channels, channels) for _ in range(4)
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    u = self.norm_t(self.spatial(x).permute(0, 3, 4, 2, 1))  # (B, H, W, T, C)
    a = _attention(self.q_t(u), self.k_t(u), self.v_t(u))
    return x + self.proj_out_t(a).permute(0, 4, 3, 1, 2)


def _depth_to_time(x: torch.Tensor, factor: int) -> torch.Tensor:
  """(B, f·C, T, H, W) → (B, C, f·T, H, W); channel group s of frame t → frame f·t + s."""
  b, fc, t, h, w = x.shape
  x = x.reshape(b, factor, fc // factor, t, h, w).permute(0, 2, 3, 1, 4, 5)
  return x.reshape(b, fc // factor, t * factor, h, w)


def _space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
  """(B, C, T, f·H, f·W) → (B, f²·C, T, H, W); channels ordered (fy, fx, C)."""
  b, c, t, fh, fw = x.shape
  x = x.reshape(b, c, t, fh // factor, factor, fw // factor, factor).permute(0, 4, 6, 1, 2, 3, 5)
  return x.reshape(b, factor * factor * c, t, fh // factor, fw // factor)


def _depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
  """(B, f²·C, T, H, W) → (B, C, T, f·H, f·W); channels ordered (fy, fx, C)."""
  b, ffc, t, h, w = x.shape
  c = ffc // (factor * factor)
  x = x.reshape(b, factor, factor, c, t, h, w).permute(0, 3, 4, 5, 1, 6, 2)
  return x.reshape(b, c, t, h * factor, w * factor)


# ----------------------------------------------------------------------------------------------
# Blocks (models/blocks.py).


def _parse_resample(spec: str) -> tuple[str, int, int] | None:
  if not spec:
    return None
  kind, _, axes = spec.partition(":")
  return kind, 2 if "t" in axes else 1, 2 if "s" in axes else 1


# Res-block kinds (blocks.RES_BLOCKS): (conv1 kernel, conv2 kernel, norms per frame).
RES_BLOCKS = {
    "3d": ((3, 3, 3), (3, 3, 3), False),
    "2d": ((1, 3, 3), (1, 3, 3), True),
    "half3d": ((3, 3, 3), (1, 3, 3), False),
}


class ResBlock(nn.Module):
  """h = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))); out = shortcut(x) + gate·h (`gated`)."""

  def __init__(
      self, cin: int, cout: int, kind: str, *, time_padding: str, norm: dict, gated: bool = False
  ):
    super().__init__()
    if kind not in RES_BLOCKS:
      raise ValueError(f"unknown res block kind {kind!r}; known: {tuple(RES_BLOCKS)}")
    k1, k2, per_frame_norms = RES_BLOCKS[kind]
    norm_kind = _per_frame(norm["kind"]) if per_frame_norms else norm["kind"]
    nkw = dict(num_groups=norm["num_groups"], eps=norm["eps"])
    self.norm1 = Norm(cin, norm_kind, **nkw)
    self.conv1 = Conv3d(cin, cout, k1, time_padding=time_padding)
    self.norm2 = Norm(cout, norm_kind, **nkw)
    self.conv2 = Conv3d(cout, cout, k2, time_padding=time_padding)
    self.nin_shortcut = Conv3d(cin, cout, (1, 1, 1)) if cin != cout else None
    self.gate = nn.Parameter(torch.zeros(())) if gated else None  # model.residual_gate

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    if self.gate is not None:
      h = h * self.gate
    return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class ConvDownsample(nn.Module):
  """Strided causal conv (`conv3d` 3×3×3 or `conv2d` 3×3 per frame), bottom/right padded."""

  def __init__(
      self, channels: int, spec: tuple[str, int, int], *, time_padding: str, time_kernel: int
  ):
    super().__init__()
    del time_padding  # always causal
    _, ft, fs = spec
    self.conv = Conv3d(
        channels,
        channels,
        (time_kernel, 3, 3),
        stride=(ft, fs, fs),
        time_padding="causal",
        spatial_padding="bottom_right" if fs == 2 else "same",
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(x)


class NearestUpsample(nn.Module):
  """`nearest3d` (CV-VAE Upsample3D) / `nearest2d` (OD-VAE SpatialUpsample2x)."""

  def __init__(
      self, channels: int, spec: tuple[str, int, int], *, time_padding: str, time_kernel: int
  ):
    super().__init__()
    del time_padding  # first / last frame replicated at both ends, whatever the decoder's
    _, self.ft, self.fs = spec
    self.conv = Conv3d(
        channels, self.ft * channels, (time_kernel, 3, 3), time_padding="replicate_both"
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.fs == 2:
      x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
    return _depth_to_time(self.conv(x), self.ft)[:, :, self.ft - 1 :]


class TrilinearUpsample(nn.Module):
  """OD-VAE Spatial2xTime2x3DUpsample: frame 0 2x in space only, frames 1.. trilinearly 2x in
  time and space, then a causal 3×3×3 conv."""

  def __init__(self, channels: int, spec: tuple[str, int, int], *, time_padding: str):
    super().__init__()
    _, self.ft, self.fs = spec
    self.conv = Conv3d(channels, channels, (3, 3, 3), time_padding=time_padding)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    space = (1, self.fs, self.fs)
    if self.ft == 2 and x.shape[2] > 1:
      x = torch.cat(
          [
              F.interpolate(x[:, :, :1], scale_factor=space, mode="trilinear"),
              F.interpolate(x[:, :, 1:], scale_factor=(2, self.fs, self.fs), mode="trilinear"),
          ],
          dim=2,
      )
    elif self.fs == 2:
      x = F.interpolate(x, scale_factor=space, mode="trilinear")
    return self.conv(x)


class DepthToSpaceUpsample(nn.Module):
  """MAGVIT-v2 style: causal 3×3×3 conv to ft·fs²·C, depth-to-time, depth-to-space, drop the
  first ft - 1 frames."""

  def __init__(self, channels: int, spec: tuple[str, int, int], *, time_padding: str):
    super().__init__()
    _, self.ft, self.fs = spec
    self.conv = Conv3d(
        channels, self.ft * self.fs**2 * channels, (3, 3, 3), time_padding=time_padding
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = _depth_to_time(self.conv(x), self.ft)
    if self.fs > 1:
      y = _depth_to_space(y, self.fs)
    return y[:, :, self.ft - 1 :]


# Resampler kinds (blocks.DOWNSAMPLERS, blocks.UPSAMPLERS):
# (channels, (kind, time factor, space factor), *, time_padding) → module.
RESAMPLERS = {
    "conv3d": functools.partial(ConvDownsample, time_kernel=3),
    "conv2d": functools.partial(ConvDownsample, time_kernel=1),
    "nearest3d": functools.partial(NearestUpsample, time_kernel=3),
    "nearest2d": functools.partial(NearestUpsample, time_kernel=1),
    "trilinear": TrilinearUpsample,
    "d2s": DepthToSpaceUpsample,
}


def _make_resampler(channels: int, spec: str, time_padding: str) -> nn.Module | None:
  """The resampler of a `"<kind>:<axes>"` spec ('' → None)."""
  parsed = _parse_resample(spec)
  if parsed is None:
    return None
  return RESAMPLERS[parsed[0]](channels, parsed, time_padding=time_padding)


# Mid-block attention kinds (blocks.ATTENTIONS).
ATTENTIONS = {
    "spatial": SpatialAttention,
    "spatiotemporal": SpatioTemporalAttention,
    "none": None,
}


def _make_attention(kind: str, channels: int, norm: dict) -> nn.Module | None:
  module = ATTENTIONS[kind]
  if module is None:
    return None
  return module(channels, norm=norm["kind"], num_groups=norm["num_groups"], eps=norm["eps"])


class MidBlock(nn.Module):

  def __init__(
      self,
      channels: int,
      block_kind: str,
      attention: str,
      *,
      time_padding: str,
      norm: dict,
      attention_norm: dict,
      gated: bool = False,
  ):
    super().__init__()
    res = dict(time_padding=time_padding, norm=norm, gated=gated)
    self.block_1 = ResBlock(channels, channels, block_kind, **res)
    self.attn_1 = _make_attention(attention, channels, attention_norm)
    self.block_2 = ResBlock(channels, channels, block_kind, **res)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.block_1(x)
    if self.attn_1 is not None:
      h = self.attn_1(h)
    return self.block_2(h)


class Level(nn.Module):
  """The res blocks of one resolution level plus its resampler (`down[i]` / `up[i]`)."""

  def __init__(
      self,
      widths_in_out,
      kind: str,
      resampler: nn.Module | None,
      resampler_attr: str,
      *,
      time_padding: str,
      norm: dict,
      gated: bool = False,
  ):
    super().__init__()
    self.block = nn.ModuleList(
        [
            ResBlock(cin, cout, kind, time_padding=time_padding, norm=norm, gated=gated)
            for cin, cout in widths_in_out
        ]
    )
    setattr(self, resampler_attr, resampler)
    self.resampler_attr = resampler_attr

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for block in self.block:
      x = block(x)
    resampler = getattr(self, self.resampler_attr)
    return x if resampler is None else resampler(x)


# ----------------------------------------------------------------------------------------------
# Encoder, decoder, autoencoder (models/autoencoder.py).


def _norms(config: Mapping[str, Any], side: str) -> tuple[dict, dict]:
  base = dict(num_groups=config["num_groups"], eps=config["norm_eps"])
  return (dict(base, kind=config[side]["norm"]), dict(base, kind=config[side]["attention_norm"]))


def _kernel(kind: str) -> tuple[int, int, int]:
  return (3, 3, 3) if kind == "3d" else (1, 3, 3)


def _gated(config: Mapping[str, Any]) -> bool:
  """`model.residual_gate` (absent in configs exported before it existed)."""
  return bool(config.get("residual_gate", False))


class Encoder(nn.Module):
  """conv_in → levels (res blocks + downsample) → mid → norm_out, SiLU, conv_out."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    cfg = config["encoder"]
    tp = cfg["time_padding"]
    norm, attention_norm = _norms(config, "encoder")
    gated = _gated(config)
    widths = [config["base_channels"] * m for m in config["channel_multipliers"]]
    # model.patch_size: p×p pixel patches stacked on channels before conv_in.
    self.patch_size = int(config.get("patch_size", 1))
    self.conv_in = Conv3d(
        config["in_channels"] * self.patch_size**2,
        config["base_channels"],
        _kernel(cfg["conv_in"]),
        time_padding=tp,
    )
    down, width = [], config["base_channels"]
    for out, kind, spec in zip(widths, cfg["blocks"], cfg["downsample"]):
      pairs = [(width if j == 0 else out, out) for j in range(cfg["num_res_blocks"])]
      resampler = _make_resampler(out, spec, tp)
      down.append(
          Level(pairs, kind, resampler, "downsample", time_padding=tp, norm=norm, gated=gated)
      )
      width = out
    self.down = nn.ModuleList(down)
    self.mid = MidBlock(
        width,
        cfg["mid_block"],
        cfg["mid_attention"],
        time_padding=tp,
        norm=norm,
        attention_norm=attention_norm,
        gated=gated,
    )
    self.norm_out = Norm(width, norm["kind"], num_groups=norm["num_groups"], eps=norm["eps"])
    out_channels = 2 * config["z_channels"] if config["double_z"] else config["z_channels"]
    self.conv_out = Conv3d(width, out_channels, _kernel(cfg.get("conv_out", "3d")), time_padding=tp)

  def body(self, x: torch.Tensor) -> torch.Tensor:
    if self.patch_size > 1:
      x = _space_to_depth(x, self.patch_size)
    h = self.conv_in(x)
    for level in self.down:
      h = level(h)
    return self.mid(h)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv_out(F.silu(self.norm_out(self.body(x))))


class Decoder(nn.Module):
  """conv_in → mid → levels (lowest resolution first; `up[0]` runs last) → conv_out."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    cfg = config["decoder"]
    tp = cfg["time_padding"]
    norm, attention_norm = _norms(config, "decoder")
    gated = _gated(config)
    widths = [config["base_channels"] * m for m in config["channel_multipliers"]]
    width = widths[-1]
    self.conv_in = Conv3d(config["z_channels"], width, _kernel(cfg["conv_in"]), time_padding=tp)
    self.mid = MidBlock(
        width,
        cfg["mid_block"],
        cfg["mid_attention"],
        time_padding=tp,
        norm=norm,
        attention_norm=attention_norm,
        gated=gated,
    )
    up = [None] * len(widths)
    for i in reversed(range(len(widths))):
      out = widths[i]
      pairs = [(width if j == 0 else out, out) for j in range(cfg["num_res_blocks"])]
      resampler = _make_resampler(out, cfg["upsample"][i], tp)
      up[i] = Level(
          pairs, cfg["blocks"][i], resampler, "upsample", time_padding=tp, norm=norm, gated=gated
      )
      width = out
    self.up = nn.ModuleList(up)
    self.norm_out = Norm(width, norm["kind"], num_groups=norm["num_groups"], eps=norm["eps"])
    self.patch_size = int(config.get("patch_size", 1))
    self.conv_out = Conv3d(
        width,
        config["out_channels"] * self.patch_size**2,
        _kernel(cfg.get("conv_out", "3d")),
        time_padding=tp,
    )

  def body(self, h: torch.Tensor) -> torch.Tensor:
    h = self.mid(h)
    for level in reversed(self.up):
      h = level(h)
    y = self.conv_out(F.silu(self.norm_out(h)))
    return y if self.patch_size == 1 else _depth_to_space(y, self.patch_size)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    return self.body(self.conv_in(z))


# ----------------------------------------------------------------------------------------------
# ProMAG growth (models/progressive.py).


class AdaNorm(nn.Module):
  """Branch B scaled (and shifted) per channel by branch A's pooled, RMS-normalised features;
  branch-B frame j uses branch-A frame j // 2."""

  def __init__(self, channels: int, mode: str, *, eps: float):
    super().__init__()
    self.scale = nn.Linear(channels, channels)
    self.shift = nn.Linear(channels, channels) if mode == "scale_shift" else None
    self.eps = eps

  def forward(self, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    pooled = a.mean(dim=(3, 4)).transpose(1, 2)  # (B, 1+k, C)
    pooled = pooled * torch.rsqrt(pooled.square().mean(-1, keepdim=True) + self.eps)
    pooled = pooled[:, torch.arange(b.shape[2], device=b.device) // 2]
    out = b * (1.0 + self.scale(pooled)).transpose(1, 2)[..., None, None]
    if self.shift is not None:
      out = out + self.shift(pooled).transpose(1, 2)[..., None, None]
    return out


def _growth_settings(config: Mapping[str, Any], side: str) -> tuple[int, str, dict]:
  width = config["base_channels"] * config["channel_multipliers"][-1]
  norm, _ = _norms(config, side)
  return width, config[side]["time_padding"], norm


def _from_lower(config: Mapping[str, Any]) -> bool:
  return (config.get("growth") or {}).get("init", "fresh") == "from_lower"


def _head_conv(config: Mapping[str, Any], side: str) -> "Conv3d":
  """A growth level's latent-side conv: 1×1×1 to / from the latent, or with
  `growth.init='from_lower'` shaped as the base's (progressive._head_conv)."""
  width, tp, _ = _growth_settings(config, side)
  if not _from_lower(config):
    kernel, latent = (1, 1, 1), config["latent_channels"]
    moments = 2 * latent
  else:
    kernel = _kernel(config[side].get("conv_out" if side == "encoder" else "conv_in", "3d"))
    latent = config["z_channels"]
    moments = 2 * latent if config["double_z"] else latent
  if side == "encoder":
    return Conv3d(width, moments, kernel, time_padding=tp)
  return Conv3d(latent, width, kernel, time_padding=tp)


class GrownEncoder(nn.Module):
  """One 2x temporal growth level on top of `lower` (its head removed)."""

  def __init__(self, lower: nn.Module, config: Mapping[str, Any]):
    super().__init__()
    growth = config["growth"]
    width, tp, norm = _growth_settings(config, "encoder")
    gated = _gated(config)
    self.lower = lower
    self.mixing = growth["mixing"]
    self.adanorm = (
        AdaNorm(width, growth["adanorm"], eps=config["norm_eps"])
        if self.mixing in ("adanorm", "both")
        else None
    )
    self.block = nn.ModuleList(
        [
            ResBlock(width, width, "3d", time_padding=tp, norm=norm, gated=gated)
            for _ in range(growth["num_res_blocks"])
        ]
    )
    self.downsample = _make_resampler(width, "conv3d:t", tp)
    self.norm_out = Norm(width, norm["kind"], num_groups=norm["num_groups"], eps=norm["eps"])
    self.conv_out = _head_conv(config, "encoder")

  def body(self, x: torch.Tensor) -> torch.Tensor:
    h = self.lower.body(x)
    a = None if self.mixing == "none" else self.lower.body(x[:, :, ::2])
    if self.adanorm is not None:
      h = self.adanorm(h, a)
    for block in self.block:
      h = block(h)
    h = self.downsample(h)
    return h + a if self.mixing in ("add", "both") else h

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv_out(F.silu(self.norm_out(self.body(x))))


class GrownDecoder(nn.Module):
  """One 2x temporal growth level under `lower` (its conv_in removed)."""

  def __init__(self, lower: nn.Module, config: Mapping[str, Any]):
    super().__init__()
    growth = config["growth"]
    width, tp, norm = _growth_settings(config, "decoder")
    gated = _gated(config)
    self.conv_in = _head_conv(config, "decoder")
    self.block = nn.ModuleList(
        [
            ResBlock(width, width, "3d", time_padding=tp, norm=norm, gated=gated)
            for _ in range(growth["num_res_blocks"])
        ]
    )
    self.upsample = _make_resampler(width, "d2s:t", tp)
    self.lower = lower

  def body(self, h: torch.Tensor) -> torch.Tensor:
    for block in self.block:
      h = block(h)
    return self.lower.body(self.upsample(h))

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    return self.body(self.conv_in(z))


# ----------------------------------------------------------------------------------------------
# The autoencoder.


class VideoAutoencoder(nn.Module):
  """encode(x: (B, C, 1+r·k, H, W) in [-1, 1]) → (mean, logvar): (B, z, 1+k, H/s, W/s);
  decode(z) → (B, C, 1+r·k, H, W). `r`, `s` = `temporal_factor`, `spatial_factor`."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    self.config = dict(config)
    encoder, decoder = Encoder(config), Decoder(config)
    levels = int((config.get("growth") or {}).get("levels", 0))
    for _ in range(levels):  # each level wraps the previous one without its head
      encoder.norm_out = encoder.conv_out = None
      decoder.conv_in = None
      encoder, decoder = GrownEncoder(encoder, config), GrownDecoder(decoder, config)
    self.encoder, self.decoder = encoder, decoder
    if config["use_quant_conv"] and (not levels or _from_lower(config)):
      moments = 2 * config["z_channels"] if config["double_z"] else config["z_channels"]
      self.quant_conv = Conv3d(moments, 2 * config["latent_channels"], (1, 1, 1))
      self.post_quant_conv = Conv3d(config["latent_channels"], config["z_channels"], (1, 1, 1))
    else:
      self.quant_conv = self.post_quant_conv = None
    time = math.prod(_parse_resample(s)[1] for s in config["encoder"]["downsample"] if s)
    self.temporal_factor = time * 2**levels
    self.spatial_factor = int(config.get("patch_size", 1)) * math.prod(
        _parse_resample(s)[2] for s in config["encoder"]["downsample"] if s
    )
    self.latent_channels = config["latent_channels"]
    self.scaling_factor = config.get("scaling_factor", 1.0)

  def check_input(self, x: torch.Tensor) -> None:
    """The causal frame rule (bootvae_jax.models.autoencoder.frame_rule_error, restated so this
    file stands alone) and the frame size."""
    if x.ndim != 5:
      raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(x.shape)}")
    t, h, w = x.shape[2:]
    r, s = self.temporal_factor, self.spatial_factor
    if (t - 1) % r:
      k = max((t - 1) // r, 0)
      raise ValueError(
          f"clip has {t} frames; a {r}x causal model needs 1+{r}k frames (e.g."
          f" {1 + r * k} or {1 + r * (k + 1)})"
      )
    if h % s or w % s:
      raise ValueError(f"frame size {h}x{w} is not divisible by the spatial factor {s}")

  def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's (mean, logvar), logvar clamped to [-30, 20]."""
    self.check_input(x)
    h = self.encoder(x)
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = torch.chunk(h, 2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)

  def decode(self, z: torch.Tensor) -> torch.Tensor:
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
    """(reconstruction, mean, logvar); samples z from the posterior when `generator` is given."""
    mean, logvar = self.encode(x)
    z = mean
    if generator is not None:
      noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
      z = mean + torch.exp(0.5 * logvar) * noise
    return self.decode(z), mean, logvar


# The keys an export's config.json may hold (`interop/exported.py` writes them; a test checks
# these against the JAX model config's fields): any other key is refused, not ignored.
_EXPORT_KEYS = frozenset(
    [
        "format",
        "format_version",
        "latent_channels",
        "model",
        "num_parameters",
        "scaling_factor",
        "source",
        "spatial_compression",
        "temporal_compression",
    ]
)
_MODEL_KEYS = frozenset(
    [
        "base_channels",
        "channel_multipliers",
        "decoder",
        "double_z",
        "dtype",
        "encoder",
        "growth",
        "in_channels",
        "kernel_init",
        "latent_channels",
        "name",
        "norm_eps",
        "num_groups",
        "out_channels",
        "output_init_scale",
        "patch_size",
        "remat",
        "residual_gate",
        "scaling_factor",
        "shift_factor",
        "use_quant_conv",
        "z_channels",
    ]
)
_MODEL_SECTION_KEYS = {
    "encoder": frozenset(
        [
            "attention_norm",
            "blocks",
            "conv_in",
            "conv_out",
            "downsample",
            "mid_attention",
            "mid_block",
            "norm",
            "num_res_blocks",
            "time_padding",
        ]
    ),
    "decoder": frozenset(
        [
            "attention_norm",
            "blocks",
            "conv_in",
            "conv_out",
            "mid_attention",
            "mid_block",
            "norm",
            "num_res_blocks",
            "time_padding",
            "upsample",
        ]
    ),
    "growth": frozenset(["adanorm", "init", "levels", "mixing", "num_res_blocks"]),
}


class ExportError(ValueError):
  """An exported folder that does not load: names the file and the key or the reason."""


def _check_keys(path: str, config: dict[str, Any]) -> None:
  """Refuses keys an export never writes (a typo, another tool's field), naming the file."""
  for key in sorted(set(config) - _EXPORT_KEYS):
    raise ExportError(f"{path}: unknown key {key!r}; an export holds {sorted(_EXPORT_KEYS)}")
  for key in ("format", "model"):
    if key not in config:
      raise ExportError(f"{path}: the required key {key!r} is missing")
  model = config["model"]
  if not isinstance(model, dict):
    raise ExportError(f"{path}: 'model' is {type(model).__name__}, not an object")
  for key in sorted(set(model) - _MODEL_KEYS):
    raise ExportError(f"{path}: unknown key 'model.{key}'")
  for section, known in _MODEL_SECTION_KEYS.items():
    if isinstance(model.get(section), dict):
      for key in sorted(set(model[section]) - known):
        raise ExportError(f"{path}: unknown key 'model.{section}.{key}'")


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  """An export's config.json, checked: its format, no unknown key, the required ones.

  Raises:
    ExportError: naming the file and the key (or why it does not parse).
  """
  path = os.path.join(directory, "config.json")
  try:
    with open(path) as f:
      config = json.load(f)
  except ValueError as error:
    raise ExportError(f"{path}: not valid JSON ({error})") from None
  if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
    found = config.get("format") if isinstance(config, dict) else None
    raise ExportError(
        f"{path} is not a bootvae_jax export (format={found!r});"
        " an `--format=official` export loads with the official CV-VAE / OD-VAE code"
    )
  _check_keys(path, config)
  return config


def load_exported(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VideoAutoencoder:
  """The exported model in `directory` (config.json + model.safetensors), in eval mode."""
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

  config = read_config(directory)
  try:
    model = VideoAutoencoder(config["model"])
  except KeyError as error:
    raise ExportError(
        f"{os.path.join(directory, 'config.json')}: the required key {error.args[0]!r} is"
        " missing from 'model' (or its encoder / decoder / growth section)"
    ) from None
  weights = os.path.join(directory, "model.safetensors")
  try:
    tensors = load_file(weights)
  except FileNotFoundError:
    raise
  except Exception as error:  # pylint: disable=broad-except  # SafetensorError and kin
    raise ExportError(
        f"{weights}: not a readable safetensors file ({error}); truncated? Export or copy it"
        " again"
    ) from None
  model.load_state_dict(tensors, strict=True)
  return model.to(device=device, dtype=dtype).eval()
