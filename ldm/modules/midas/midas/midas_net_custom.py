"""MiDaS v2.1 small (original ``midas/midas_net_custom.py``): an EfficientNet-Lite3 encoder,
DPT-style fusion blocks whose width halves from coarse to fine (``expand``), and a small head;
for 256 x 256 inputs on constrained devices."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from ldm.modules.midas.midas.base_model import BaseModel
from ldm.modules.midas.midas.blocks import FeatureFusionBlock_custom, Interpolate, _make_encoder, refine
from ldm.modules.midas.midas.dpt_depth import check_input_size


class MidasNet_small(BaseModel):
    """Returns (B, H, W) disparity. ``path``: a MiDaS ``.pt`` file (``midas_v21_small-70d6b9c8.pt``).
    ``exportable`` and ``channels_last`` are accepted as the original's signature has them; they
    change no number (TF "SAME" padding is computed the same way either way)."""

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None, features: int = 64,
                 backbone: str = "efficientnet_lite3", non_negative: bool = True, exportable: bool = True,
                 channels_last: bool = False, align_corners: bool = True,
                 blocks: Optional[Mapping] = None):
        super().__init__()
        blocks = {"expand": True} if blocks is None else dict(blocks)
        if backbone != "efficientnet_lite3":
            raise ValueError(f"MidasNet_small has an efficientnet_lite3 backbone, got {backbone!r}")
        self.channels_last = channels_last
        self.exportable = exportable
        self.blocks = blocks
        self.backbone = backbone
        self.groups = 1
        self.expand = bool(blocks.get("expand", False))
        widths = [features * 2 ** i for i in range(4)] if self.expand else [features] * 4

        self.pretrained, self.scratch = _make_encoder(backbone, features, groups=self.groups, expand=self.expand)
        self.scratch.activation = nn.ReLU(False)
        self.scratch.refinenet4 = FeatureFusionBlock_custom(widths[3], self.scratch.activation, deconv=False, bn=False,
                                                            expand=self.expand, align_corners=align_corners)
        self.scratch.refinenet3 = FeatureFusionBlock_custom(widths[2], self.scratch.activation, deconv=False, bn=False,
                                                            expand=self.expand, align_corners=align_corners)
        self.scratch.refinenet2 = FeatureFusionBlock_custom(widths[1], self.scratch.activation, deconv=False, bn=False,
                                                            expand=self.expand, align_corners=align_corners)
        self.scratch.refinenet1 = FeatureFusionBlock_custom(widths[0], self.scratch.activation, deconv=False, bn=False,
                                                            align_corners=align_corners)
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1, groups=self.groups),
            Interpolate(scale_factor=2, mode="bilinear"),
            nn.Conv2d(features // 2, 32, kernel_size=3, stride=1, padding=1),
            self.scratch.activation,
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
            nn.ReLU(True) if non_negative else nn.Identity(),
            nn.Identity(),
        )
        if path:
            self.load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        return torch.squeeze(self.scratch.output_conv(refine(self.scratch, self.pretrained(x))), dim=1)
