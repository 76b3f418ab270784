"""MiDaS v2.1 (original ``midas/midas_net.py``; Ranftl et al. 2020, "Towards Robust Monocular
Depth Estimation: Mixing Datasets for Zero-shot Cross-dataset Transfer"): a ResNeXt-101 32x8d
encoder, RefineNet-style fusion and a convolutional head predicting relative inverse depth."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from ldm.modules.midas.midas.base_model import BaseModel
from ldm.modules.midas.midas.blocks import FeatureFusionBlock, Interpolate, _make_encoder, refine
from ldm.modules.midas.midas.dpt_depth import check_input_size


class MidasNet(BaseModel):
    """MiDaS v2.1 (384 x 384 training size). Returns (B, H, W) disparity. ``path``: a MiDaS
    ``.pt`` file to load (``midas_v21-f6b98070.pt``); ``backbone_options``: ``ResNeXtSpec`` fields
    for toy models."""

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None, features: int = 256,
                 non_negative: bool = True, backbone_options: Optional[Mapping] = None):
        super().__init__()
        self.pretrained, self.scratch = _make_encoder(backbone="resnext101_wsl", features=features,
                                                      backbone_options=backbone_options)
        self.scratch.refinenet4 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, 128, kernel_size=3, stride=1, padding=1),
            Interpolate(scale_factor=2, mode="bilinear"),
            nn.Conv2d(128, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
            nn.ReLU(True) if non_negative else nn.Identity(),
        )
        if path:
            self.load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        return torch.squeeze(self.scratch.output_conv(refine(self.scratch, self.pretrained(x))), dim=1)
