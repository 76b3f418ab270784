"""Convolutional encoder/decoder of the first-stage autoencoders (KL and VQ), their building
blocks, and the pixel-space DDPM UNet of Ho et al. 2020 they derive from.

Module and parameter names follow the original ``ldm.modules.diffusionmodules.model`` so that
released checkpoints load unchanged (``encoder.down.0.block.0.conv1.weight`` ...). Attention
runs through :func:`torch.nn.functional.scaled_dot_product_attention`.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
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


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """Halve the resolution: zero-pad right/bottom by one then a stride-2 3x3 conv (torch convs
    have no asymmetric padding), or 2x2 average pooling without conv."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if self.with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

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
    :class:`~ldm.modules.attention.SpatialSelfAttention`, so it shares its SDPA path (attention
    slicing and the precision switch apply to the VAE too)."""


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


def _build_down_path(ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions,
                     resolution: int, temb_channels: int, dropout: float, resamp_with_conv: bool,
                     attn_type: str) -> tuple:
    """The contracting path shared by :class:`Encoder` and :class:`Model`: returns the
    ``down`` ModuleList, the final width and the final (config) resolution. Attention is placed
    where the nominal resolution (from ``resolution``, not the input) is in ``attn_resolutions``."""
    in_ch_mult = (1,) + tuple(ch_mult)
    curr_res = resolution
    down = nn.ModuleList()
    block_in = ch
    for i_level in range(len(ch_mult)):
        blocks, attns = [], []
        block_in = ch * in_ch_mult[i_level]
        block_out = ch * ch_mult[i_level]
        for _ in range(num_res_blocks):
            blocks.append(_resnet(block_in, block_out, temb_channels, dropout))
            block_in = block_out
            if curr_res in attn_resolutions:
                attns.append(make_attn(block_in, attn_type=attn_type))
        level = _level(blocks, attns)
        if i_level != len(ch_mult) - 1:
            level.downsample = Downsample(block_in, resamp_with_conv)
            curr_res = curr_res // 2
        down.append(level)
    return down, block_in, curr_res


class Encoder(nn.Module):
    """Image -> latent moments: conv_in, ``len(ch_mult)`` levels of ``num_res_blocks`` ResNet
    blocks (downsampling between levels), mid block with attention, norm, swish, conv_out to
    ``2 * z_channels`` (mean and log-variance) when ``double_z``."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
                 resamp_with_conv: bool = True, in_channels: int, resolution: int,
                 z_channels: int, double_z: bool = True, use_linear_attn: bool = False,
                 attn_type: str = "vanilla", **ignore_kwargs):
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.in_ch_mult = (1,) + tuple(ch_mult)

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down, block_in, _ = _build_down_path(ch, ch_mult, num_res_blocks, attn_resolutions,
                                                  resolution, self.temb_ch, dropout,
                                                  resamp_with_conv, attn_type)
        self.mid = _middle(block_in, self.temb_ch, dropout, attn_type)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels,
                                  kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = _run_level(level, h, i_block, None)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = _run_middle(self.mid, h, None)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image: conv_in to the widest channel count, mid block, ``len(ch_mult)`` levels
    of ``num_res_blocks + 1`` ResNet blocks with nearest x2 upsampling, norm, swish, conv_out.
    ``up[0]`` is the highest resolution (levels are built coarse to fine and prepended)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
                 resamp_with_conv: bool = True, in_channels: Optional[int], resolution: int,
                 z_channels: int, give_pre_end: bool = False, tanh_out: bool = False,
                 use_linear_attn: bool = False, attn_type: str = "vanilla", **ignorekwargs):
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        logger.info("Working with z of shape %s = %d dimensions.", self.z_shape, int(np.prod(self.z_shape)))

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _middle(block_in, self.temb_ch, dropout, attn_type)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            blocks, attns = [], []
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                blocks.append(_resnet(block_in, block_out, self.temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attns.append(make_attn(block_in, attn_type=attn_type))
            level = _level(blocks, attns)
            if i_level != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, level)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = _run_middle(self.mid, self.conv_in(z), None)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = _run_level(self.up[i_level], h, i_block, None)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


class Model(nn.Module):
    """The pixel-space DDPM UNet (Ho et al. 2020): timestep MLP ``temb.dense``, contracting path
    as the Encoder, expanding path whose blocks take skip connections, optional channel-wise
    ``context`` concatenated to the input."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
                 resamp_with_conv: bool = True, in_channels: int, resolution: int,
                 use_timestep: bool = True, use_linear_attn: bool = False, attn_type: str = "vanilla"):
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.use_timestep = use_timestep
        if use_timestep:
            self.temb = nn.Module()
            self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        temb_ch = self.temb_ch

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down, block_in, curr_res = _build_down_path(ch, ch_mult, num_res_blocks, attn_resolutions,
                                                         resolution, temb_ch, dropout,
                                                         resamp_with_conv, attn_type)
        self.mid = _middle(block_in, temb_ch, dropout, attn_type)

        in_ch_mult = (1,) + tuple(ch_mult)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            blocks, attns = [], []
            block_out = ch * ch_mult[i_level]
            for i_block in range(num_res_blocks + 1):
                skip_in = ch * (in_ch_mult[i_level] if i_block == num_res_blocks else ch_mult[i_level])
                blocks.append(_resnet(block_in + skip_in, block_out, temb_ch, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attns.append(make_attn(block_in, attn_type=attn_type))
            level = _level(blocks, attns)
            if i_level != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, level)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if context is not None:
            x = torch.cat((x, context), dim=1)
        temb = None
        if self.use_timestep:
            if t is None:
                raise ValueError("this Model uses timesteps (use_timestep=True): pass t")
            temb = self.temb.dense[0](get_timestep_embedding(t, self.ch))
            temb = self.temb.dense[1](nonlinearity(temb))

        hs = [self.conv_in(x)]
        for i_level, level in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                hs.append(_run_level(level, hs[-1], i_block, temb))
            if i_level != self.num_resolutions - 1:
                hs.append(level.downsample(hs[-1]))
        h = _run_middle(self.mid, hs[-1], temb)
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = _run_level(self.up[i_level], torch.cat([h, hs.pop()], dim=1), i_block, temb)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))

    def get_last_layer(self) -> torch.Tensor:
        return self.conv_out.weight


class SimpleDecoder(nn.Module):
    """A small x2 decoder: 1x1 conv, three ResNet blocks (C -> 2C -> 4C -> 2C), 1x1 conv, upsample."""

    def __init__(self, in_channels: int, out_channels: int, *args, **kwargs):
        super().__init__()
        self.model = nn.ModuleList([
            nn.Conv2d(in_channels, in_channels, 1),
            _resnet(in_channels, 2 * in_channels, 0, 0.0),
            _resnet(2 * in_channels, 4 * in_channels, 0, 0.0),
            _resnet(4 * in_channels, 2 * in_channels, 0, 0.0),
            nn.Conv2d(2 * in_channels, in_channels, 1),
            Upsample(in_channels, with_conv=True),
        ])
        self.norm_out = Normalize(in_channels)
        self.conv_out = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model:
            x = layer(x, None) if isinstance(layer, ResnetBlock) else layer(x)
        return self.conv_out(nonlinearity(self.norm_out(x)))


class UpsampleDecoder(nn.Module):
    """Stacks of ``num_res_blocks + 1`` ResNet blocks per ``ch_mult`` level with x2 upsampling
    between levels."""

    def __init__(self, in_channels: int, out_channels: int, ch: int, num_res_blocks: int,
                 resolution: int, ch_mult: Sequence[int] = (2, 2), dropout: float = 0.0):
        super().__init__()
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = in_channels
        self.res_blocks = nn.ModuleList()
        self.upsample_blocks = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(_resnet(block_in, ch * ch_mult[i_level], self.temb_ch, dropout))
                block_in = ch * ch_mult[i_level]
            self.res_blocks.append(nn.ModuleList(blocks))
            if i_level != self.num_resolutions - 1:
                self.upsample_blocks.append(Upsample(block_in, True))
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i_level in range(self.num_resolutions):
            for block in self.res_blocks[i_level]:
                h = block(h, None)
            if i_level != self.num_resolutions - 1:
                h = self.upsample_blocks[i_level](h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class LatentRescaler(nn.Module):
    """Resize a latent by ``factor`` (nearest) between two stacks of ``depth`` ResNet blocks,
    with an attention block after the resize."""

    def __init__(self, factor: float, in_channels: int, mid_channels: int, out_channels: int, depth: int = 2):
        super().__init__()
        self.factor = factor
        self.conv_in = nn.Conv2d(in_channels, mid_channels, kernel_size=3, stride=1, padding=1)
        self.res_block1 = nn.ModuleList([_resnet(mid_channels, mid_channels, 0, 0.0) for _ in range(depth)])
        self.attn = AttnBlock(mid_channels)
        self.res_block2 = nn.ModuleList([_resnet(mid_channels, mid_channels, 0, 0.0) for _ in range(depth)])
        self.conv_out = nn.Conv2d(mid_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.res_block1:
            x = block(x, None)
        size = (int(round(x.shape[2] * self.factor)), int(round(x.shape[3] * self.factor)))
        x = self.attn(F.interpolate(x, size=size))
        for block in self.res_block2:
            x = block(x, None)
        return self.conv_out(x)


class MergedRescaleEncoder(nn.Module):
    """:class:`Encoder` (single z of width ``ch * ch_mult[-1]``) followed by a :class:`LatentRescaler`."""

    def __init__(self, in_channels: int, ch: int, resolution: int, out_ch: int, num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, resamp_with_conv: bool = True,
                 ch_mult: Sequence[int] = (1, 2, 4, 8), rescale_factor: float = 1.0,
                 rescale_module_depth: int = 1):
        super().__init__()
        intermediate_chn = ch * ch_mult[-1]
        self.encoder = Encoder(in_channels=in_channels, num_res_blocks=num_res_blocks, ch=ch,
                               ch_mult=ch_mult, z_channels=intermediate_chn, double_z=False,
                               resolution=resolution, attn_resolutions=attn_resolutions,
                               dropout=dropout, resamp_with_conv=resamp_with_conv, out_ch=None)
        self.rescaler = LatentRescaler(factor=rescale_factor, in_channels=intermediate_chn,
                                       mid_channels=intermediate_chn, out_channels=out_ch,
                                       depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rescaler(self.encoder(x))


class MergedRescaleDecoder(nn.Module):
    """:class:`LatentRescaler` to width ``z_channels * ch_mult[-1]`` followed by a :class:`Decoder`."""

    def __init__(self, z_channels: int, out_ch: int, resolution: int, num_res_blocks: int,
                 attn_resolutions: Sequence[int], ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 dropout: float = 0.0, resamp_with_conv: bool = True, rescale_factor: float = 1.0,
                 rescale_module_depth: int = 1):
        super().__init__()
        tmp_chn = z_channels * ch_mult[-1]
        self.decoder = Decoder(out_ch=out_ch, z_channels=tmp_chn, attn_resolutions=attn_resolutions,
                               dropout=dropout, resamp_with_conv=resamp_with_conv, in_channels=None,
                               num_res_blocks=num_res_blocks, ch_mult=ch_mult, resolution=resolution, ch=ch)
        self.rescaler = LatentRescaler(factor=rescale_factor, in_channels=z_channels, mid_channels=tmp_chn,
                                       out_channels=tmp_chn, depth=rescale_module_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))


class Upsampler(nn.Module):
    """Latent super-resolution from ``in_size`` to ``out_size``: a rescaler by
    ``1 + out_size % in_size`` then a Decoder with ``log2(out_size // in_size) + 1`` levels."""

    def __init__(self, in_size: int, out_size: int, in_channels: int, out_channels: int, ch_mult: int = 2):
        super().__init__()
        if out_size < in_size:
            raise ValueError(f"Upsampler needs out_size >= in_size, got {out_size} < {in_size}")
        num_blocks = int(np.log2(out_size // in_size)) + 1
        factor_up = 1.0 + (out_size % in_size)
        logger.info("Building %s with in_size: %d --> out_size %d and factor %s",
                    type(self).__name__, in_size, out_size, factor_up)
        self.rescaler = LatentRescaler(factor=factor_up, in_channels=in_channels,
                                       mid_channels=2 * in_channels, out_channels=in_channels)
        self.decoder = Decoder(out_ch=out_channels, resolution=out_size, z_channels=in_channels,
                               num_res_blocks=2, attn_resolutions=[], in_channels=None, ch=in_channels,
                               ch_mult=[ch_mult for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.rescaler(x))


class Resize(nn.Module):
    """Fixed interpolation by a scale factor (learned resizing is not available, as in the original)."""

    def __init__(self, in_channels: Optional[int] = None, learned: bool = False, mode: str = "bilinear"):
        super().__init__()
        if learned:
            raise NotImplementedError("Resize(learned=True) is not implemented (nor in the original code)")
        self.with_conv = learned
        self.mode = mode

    def forward(self, x: torch.Tensor, scale_factor: float = 1.0) -> torch.Tensor:
        if scale_factor == 1.0:
            return x
        return F.interpolate(x, mode=self.mode, align_corners=False, scale_factor=scale_factor)
