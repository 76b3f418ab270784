"""Decoders and rescalers of the original's latent super-resolution experiments, built from the
encoder/decoder blocks: a small x2 decoder, an upsampling decoder, a latent rescaler and the
encoder/decoder merged with it, the latent ``Upsampler`` and a fixed ``Resize``. Importable from
:mod:`ldm.modules.diffusionmodules.model` under the original names."""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.conv_blocks import AttnBlock, Normalize, ResnetBlock, Upsample, _resnet, nonlinearity
from ldm.modules.diffusionmodules.encoder_decoder import Decoder, Encoder

logger = logging.getLogger(__name__)


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
