"""The convolutional encoder and decoder of the first-stage autoencoders (KL and VQ) and the
pixel-space DDPM UNet of Ho et al. 2020 they derive from, which share the contracting and
expanding paths. Parameter names follow the original ``ldm.modules.diffusionmodules.model`` (where
these classes are importable), so released checkpoints load unchanged."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.conv_blocks import (
    Downsample,
    Normalize,
    Upsample,
    _level,
    _middle,
    _resnet,
    _run_level,
    _run_middle,
    get_timestep_embedding,
    make_attn,
    nonlinearity,
)

logger = logging.getLogger(__name__)


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


def _build_up_path(ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions, block_in: int,
                   curr_res: int, temb_channels: int, dropout: float, resamp_with_conv: bool, attn_type: str,
                   with_skips: bool) -> tuple:
    """The expanding path shared by :class:`Decoder` and :class:`Model`: ``num_res_blocks + 1``
    ResNet blocks per level with nearest x2 upsampling between levels; returns the ``up``
    ModuleList (``up[0]`` is the highest resolution: levels are built coarse to fine and
    prepended) and the final width. ``with_skips``: each block also takes the matching skip
    connection of the contracting path (the UNet)."""
    in_ch_mult = (1,) + tuple(ch_mult)
    up = nn.ModuleList()
    for i_level in reversed(range(len(ch_mult))):
        blocks, attns = [], []
        block_out = ch * ch_mult[i_level]
        for i_block in range(num_res_blocks + 1):
            skip_in = 0
            if with_skips:
                skip_in = ch * (in_ch_mult[i_level] if i_block == num_res_blocks else ch_mult[i_level])
            blocks.append(_resnet(block_in + skip_in, block_out, temb_channels, dropout))
            block_in = block_out
            if curr_res in attn_resolutions:
                attns.append(make_attn(block_in, attn_type=attn_type))
        level = _level(blocks, attns)
        if i_level != 0:
            level.upsample = Upsample(block_in, resamp_with_conv)
            curr_res = curr_res * 2
        up.insert(0, level)
    return up, block_in


class _ConvNet(nn.Module):
    """The size attributes the original's Encoder, Decoder and Model record (``ch``, ``temb_ch``,
    ``num_resolutions``, ``num_res_blocks``, ``resolution``, ``in_channels``)."""

    def __init__(self, ch: int, temb_ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int,
                 in_channels: Optional[int]):
        super().__init__()
        self.ch = ch
        self.temb_ch = temb_ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels


def _attention_type(use_linear_attn: bool, attn_type: str) -> str:
    return "linear" if use_linear_attn else attn_type


class Encoder(_ConvNet):
    """Image -> latent moments: conv_in, ``len(ch_mult)`` levels of ``num_res_blocks`` ResNet
    blocks (downsampling between levels), mid block with attention, norm, swish, conv_out to
    ``2 * z_channels`` (mean and log-variance) when ``double_z``."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
                 resamp_with_conv: bool = True, in_channels: int, resolution: int,
                 z_channels: int, double_z: bool = True, use_linear_attn: bool = False,
                 attn_type: str = "vanilla", **ignore_kwargs):
        super().__init__(ch, 0, ch_mult, num_res_blocks, resolution, in_channels)
        attn_type = _attention_type(use_linear_attn, attn_type)
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


class Decoder(_ConvNet):
    """Latent -> image: conv_in to the widest channel count, mid block, ``len(ch_mult)`` levels
    of ``num_res_blocks + 1`` ResNet blocks with nearest x2 upsampling, norm, swish, conv_out.
    ``up[0]`` is the highest resolution (levels are built coarse to fine and prepended)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
                 resamp_with_conv: bool = True, in_channels: Optional[int], resolution: int,
                 z_channels: int, give_pre_end: bool = False, tanh_out: bool = False,
                 use_linear_attn: bool = False, attn_type: str = "vanilla", **ignorekwargs):
        super().__init__(ch, 0, ch_mult, num_res_blocks, resolution, in_channels)
        attn_type = _attention_type(use_linear_attn, attn_type)
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        logger.info("Working with z of shape %s = %d dimensions.", self.z_shape, int(np.prod(self.z_shape)))

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _middle(block_in, self.temb_ch, dropout, attn_type)
        self.up, block_in = _build_up_path(ch, ch_mult, num_res_blocks, attn_resolutions, block_in, curr_res,
                                           self.temb_ch, dropout, resamp_with_conv, attn_type, with_skips=False)
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


class Model(_ConvNet):
    """The pixel-space DDPM UNet (Ho et al. 2020): timestep MLP ``temb.dense``, contracting path
    as the Encoder, expanding path whose blocks take skip connections, optional channel-wise
    ``context`` concatenated to the input."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: int, attn_resolutions: Sequence[int], dropout: float = 0.0,
                 resamp_with_conv: bool = True, in_channels: int, resolution: int,
                 use_timestep: bool = True, use_linear_attn: bool = False, attn_type: str = "vanilla"):
        super().__init__(ch, ch * 4, ch_mult, num_res_blocks, resolution, in_channels)
        attn_type = _attention_type(use_linear_attn, attn_type)
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
        self.up, block_in = _build_up_path(ch, ch_mult, num_res_blocks, attn_resolutions, block_in, curr_res,
                                           temb_ch, dropout, resamp_with_conv, attn_type, with_skips=True)
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
