"""DPT depth models (original ``midas/dpt_depth.py``; Ranftl et al. 2021, "Vision Transformers
for Dense Prediction"): a ViT encoder reassembled into four feature maps, fused from coarse to
fine, and a convolutional head that predicts relative inverse depth (disparity) at the input
resolution."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from ldm.modules.midas.midas.base_model import BaseModel
from ldm.modules.midas.midas.blocks import FeatureFusionBlock_custom, Interpolate, _make_encoder, refine

DPT_HOOKS = {"vitb_rn50_384": [0, 1, 8, 11], "vitb16_384": [2, 5, 8, 11], "vitl16_384": [5, 11, 17, 23]}
# Every MiDaS network sees its input at 1/32 in its deepest layer; other sizes cannot be fused.
INPUT_MULTIPLE = 32


def check_input_size(x: torch.Tensor) -> None:
    """A MiDaS input must be (B, 3, H, W) with H and W multiples of 32 (``load_midas_transform`` gives that)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"MiDaS expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[2] % INPUT_MULTIPLE or x.shape[3] % INPUT_MULTIPLE:
        raise ValueError(f"MiDaS input height and width must be multiples of {INPUT_MULTIPLE} (the MiDaS transform "
                         f"resizes to such sizes), got {x.shape[2]} x {x.shape[3]}")


def _make_fusion_block(features: int, use_bn: bool) -> FeatureFusionBlock_custom:
    return FeatureFusionBlock_custom(features, nn.ReLU(False), deconv=False, bn=use_bn, expand=False,
                                     align_corners=True)


class DPT(BaseModel):
    """Encoder (``pretrained``), the ``scratch`` convolutions and fusion blocks ``refinenet1..4``,
    and the task head as ``scratch.output_conv``. ``backbone_options`` resizes the encoder for
    toy models (see ``ldm.modules.midas.midas.vit.BACKBONE_OPTIONS``; ``hooks`` among them)."""

    def __init__(self, head: nn.Module, features: int = 256, backbone: str = "vitb_rn50_384",
                 readout: str = "project", channels_last: bool = False, use_bn: bool = False,
                 backbone_options: Optional[Mapping] = None):
        super().__init__()
        # Accepted as the original does; it only ever called x.contiguous(...) without using the result.
        self.channels_last = channels_last
        if backbone not in DPT_HOOKS:
            raise ValueError(f"DPT backbone must be one of {list(DPT_HOOKS)}, got {backbone!r}")
        options = dict(backbone_options or {})
        hooks = options.pop("hooks", DPT_HOOKS[backbone])
        self.pretrained, self.scratch = _make_encoder(backbone, features, groups=1, expand=False, hooks=hooks,
                                                      use_readout=readout, backbone_options=options)
        self.scratch.refinenet1 = _make_fusion_block(features, use_bn)
        self.scratch.refinenet2 = _make_fusion_block(features, use_bn)
        self.scratch.refinenet3 = _make_fusion_block(features, use_bn)
        self.scratch.refinenet4 = _make_fusion_block(features, use_bn)
        self.scratch.output_conv = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x)
        return self.scratch.output_conv(refine(self.scratch, self.pretrained(x)))


class DPTDepthModel(DPT):
    """DPT with the depth head: 3x3 to features/2, x2 bilinear upsampling, 3x3 to 32, ReLU, 1x1 to 1,
    ReLU when ``non_negative``. Returns (B, H, W) disparity. ``path``: a MiDaS ``.pt`` file to load."""

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None, non_negative: bool = True, **kwargs):
        features = kwargs.get("features", 256)
        head = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, stride=1, padding=1),
            Interpolate(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, kernel_size=3, stride=1, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, kernel_size=1, stride=1, padding=0),
            nn.ReLU(True) if non_negative else nn.Identity(),
            nn.Identity(),
        )
        super().__init__(head, **kwargs)
        if path is not None:
            self.load(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(dim=1)
