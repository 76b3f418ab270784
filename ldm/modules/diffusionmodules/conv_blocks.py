"""Building blocks of the convolutional encoder/decoder of the first-stage autoencoders and of the
pixel-space DDPM UNet (Ho et al. 2020): timestep embedding, normalisation, resampling, ResNet and
attention blocks, and the helpers that arrange them into the original's module layout
(``down[i].block[j]``, ``down[i].attn[j]``, ``mid.block_1`` ...). Importable from
:mod:`ldm.modules.diffusionmodules.model` under the original names."""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import SpatialSelfAttention

logger = logging.getLogger(__name__)

ATTENTION_TYPES = ("vanilla", "vanilla-xformers", "linear", "none")


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """Sinusoidal embedding of ``timesteps`` (shape [N]) as ``[sin, cos]`` halves, frequencies
    ``10000^(-i / (half - 1))`` (Ho et al. 2020 code; note the UNet's ``timestep_embedding``
    uses ``[cos, sin]`` and ``/ half``). Odd sizes get one zero column."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor, got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    exponent = math.log(10000) / (half_dim - 1)
    freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -exponent)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU: x * sigmoid(x), through torch's fused kernel (one temporary less)."""
    return F.silu(x)


def Normalize(in_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the autoencoder's eps of 1e-6 (the UNet uses 1e-5)."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


class _Resample(nn.Module):
    """A resolution change with an optional 3x3 ``conv`` of the given stride and padding."""

    def __init__(self, in_channels: int, with_conv: bool, stride: int, padding: int):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=stride, padding=padding)


class Upsample(_Resample):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__(in_channels, with_conv, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(_Resample):
    """Halve the resolution: zero-pad right/bottom by one then a stride-2 3x3 conv (torch convs
    have no asymmetric padding), or 2x2 average pooling without conv."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__(in_channels, with_conv, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: norm-swish-conv, (+ projected time embedding),
    norm-swish-dropout-conv, with a 1x1 (or 3x3) shortcut when the width changes."""

    def __init__(self, *, in_channels: int, out_channels: Optional[int] = None,
                 conv_shortcut: bool = False, dropout: float, temb_channels: int = 512):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(SpatialSelfAttention):
    """The VAE's mid-block attention: single-head self-attention over all pixels with 1x1-conv
    q, k, v and output projection, scale C^-1/2, added to the input. Same parameters and maths as
    :class:`~ldm.modules.attention.SpatialSelfAttention`, so it shares its SDPA path (the model's
    attention slicing and precision settings apply to the VAE too)."""


class MemoryEfficientAttnBlock(AttnBlock):
    """The SD 2.x "vanilla-xformers" block: same parameters and maths as :class:`AttnBlock`;
    torch's fused attention kernels take the place of xformers."""


class LinAttnBlock(nn.Module):
    """Linear attention (Katharopoulos et al. 2020 style, softmax over key positions) with one
    head of width ``in_channels``; like the original it replaces its input (no residual)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.heads = 1
        self.to_qkv = nn.Conv2d(in_channels, in_channels * 3, 1, bias=False)
        self.to_out = nn.Conv2d(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = rearrange(self.to_qkv(x), "b (qkv heads c) h w -> qkv b heads c (h w)",
                            heads=self.heads, qkv=3)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        out = rearrange(out, "b heads c (h w) -> b (heads c) h w", heads=self.heads, h=height, w=width)
        return self.to_out(out)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """Attention block by name: "vanilla" and "vanilla-xformers" (both SDPA, same keys),
    "linear" (:class:`LinAttnBlock`) or "none" (identity)."""
    if attn_type not in ATTENTION_TYPES:
        raise ValueError(f"attn_type must be one of {', '.join(ATTENTION_TYPES)}; got '{attn_type}'")
    logger.debug("making attention of type '%s' with %d in_channels", attn_type, in_channels)
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "vanilla-xformers":
        return MemoryEfficientAttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity(in_channels)
    return LinAttnBlock(in_channels)


def _resnet(block_in: int, block_out: int, temb_channels: int, dropout: float) -> ResnetBlock:
    return ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=temb_channels,
                       dropout=dropout)


def _level(blocks: Sequence[nn.Module], attns: Sequence[nn.Module]) -> nn.Module:
    """A resolution level holding ``block`` and ``attn`` lists (the original's key layout)."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _middle(block_in: int, temb_channels: int, dropout: float, attn_type: str) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = _resnet(block_in, block_in, temb_channels, dropout)
    mid.attn_1 = make_attn(block_in, attn_type=attn_type)
    mid.block_2 = _resnet(block_in, block_in, temb_channels, dropout)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h, temb)), temb)


def _run_level(level: nn.Module, h: torch.Tensor, i_block: int, temb: Optional[torch.Tensor]) -> torch.Tensor:
    h = level.block[i_block](h, temb)
    return level.attn[i_block](h) if len(level.attn) > 0 else h
