"""gen-efficientnet's ``tf_efficientnet_lite3`` (Tan & Le 2019, "EfficientNet"; the Lite
variants: ReLU6, no squeeze-excitation, stem and head not scaled) with that library's parameter
names (``conv_stem``, ``bn1``, ``blocks.S.B.{conv_dw, bn1, conv_pw, bn2, conv_pwl, bn3}``), for
MiDaS v2.1 small. ``tf_`` weights use TF "SAME" padding and BatchNorm eps 1e-3."""
from __future__ import annotations

import math
from typing import List, NamedTuple, Sequence

import torch
import torch.nn as nn

from ldm.modules.midas.midas.backbones.padding import Conv2dSame
from ldm.modules.midas.midas.backbones.resnetv2 import make_div

BN_EPS_TF = 1e-3


class StageArgs(NamedTuple):
    """One stage of the architecture definition: block type ("ds" depthwise-separable or "ir"
    inverted residual), repeats, kernel, stride, expansion ratio, output channels (before scaling)."""
    block: str
    repeats: int
    kernel: int
    stride: int
    expansion: int
    channels: int


# gen-efficientnet ``_gen_efficientnet_lite`` arch_def: ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ...
EFFICIENTNET_LITE_STAGES = (
    StageArgs("ds", 1, 3, 1, 1, 16),
    StageArgs("ir", 2, 3, 2, 6, 24),
    StageArgs("ir", 2, 5, 2, 6, 40),
    StageArgs("ir", 3, 3, 2, 6, 80),
    StageArgs("ir", 3, 5, 1, 6, 112),
    StageArgs("ir", 4, 5, 2, 6, 192),
    StageArgs("ir", 1, 3, 1, 6, 320),
)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS_TF)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk convolution, BN, ReLU6, pointwise 1x1 convolution, BN (no activation);
    residual when the shape is kept."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int):
        super().__init__()
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_dw = Conv2dSame(in_chs, in_chs, kernel, stride=stride, groups=in_chs)
        self.bn1 = _bn(in_chs)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = Conv2dSame(in_chs, out_chs, 1)
        self.bn2 = _bn(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.act1(self.bn1(self.conv_dw(x)))))
        return out + x if self.has_residual else out


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (Sandler et al. 2018): 1x1 expansion, BN, ReLU6, depthwise
    kxk, BN, ReLU6, 1x1 projection, BN; residual when the shape is kept."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid_chs = make_div(in_chs * expansion)
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_pw = Conv2dSame(in_chs, mid_chs, 1)
        self.bn1 = _bn(mid_chs)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = Conv2dSame(mid_chs, mid_chs, kernel, stride=stride, groups=mid_chs)
        self.bn2 = _bn(mid_chs)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = Conv2dSame(mid_chs, out_chs, 1)
        self.bn3 = _bn(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.act2(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_residual else out


def scaled_repeats(stages: Sequence[StageArgs], depth_multiplier: float) -> List[int]:
    """Blocks per stage: ceil(repeats * depth_multiplier), the first and last stage kept (Lite)."""
    last = len(stages) - 1
    return [s.repeats if i in (0, last) else int(math.ceil(s.repeats * depth_multiplier))
            for i, s in enumerate(stages)]


class EfficientNetLite(nn.Module):
    """Stem (3x3/2 convolution to 32 channels, BN, ReLU6) and the seven block stages; the head
    (1x1 convolution to 1280, pooling, classifier) is left out, as MiDaS does not use it."""

    def __init__(self, channel_multiplier: float = 1.2, depth_multiplier: float = 1.4, stem_size: int = 32,
                 stages: Sequence[StageArgs] = EFFICIENTNET_LITE_STAGES):
        super().__init__()
        self.conv_stem = Conv2dSame(3, stem_size, 3, stride=2)
        self.bn1 = _bn(stem_size)
        self.act1 = nn.ReLU6(inplace=True)
        blocks, in_chs, self.stage_channels = [], stem_size, []
        for args, repeats in zip(stages, scaled_repeats(stages, depth_multiplier)):
            out_chs = make_div(args.channels * channel_multiplier)
            stage = []
            for index in range(repeats):
                stride = args.stride if index == 0 else 1
                if args.block == "ds":
                    stage.append(DepthwiseSeparableConv(in_chs, out_chs, args.kernel, stride))
                else:
                    stage.append(InvertedResidual(in_chs, out_chs, args.kernel, stride, args.expansion))
                in_chs = out_chs
            blocks.append(nn.Sequential(*stage))
            self.stage_channels.append(out_chs)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))


def tf_efficientnet_lite3() -> EfficientNetLite:
    """EfficientNet-Lite3: channels x1.2, depth x1.4 (300 px in its paper; MiDaS small runs it at 256)."""
    return EfficientNetLite(channel_multiplier=1.2, depth_multiplier=1.4)
