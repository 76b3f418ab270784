"""timm's ``ResNetV2`` as the ViT-hybrid model uses it (``vit_base_resnet50_384``): a ResNet-50
stem and the first three stages (3, 4, 9 bottlenecks) of non-pre-activation bottleneck blocks,
built from weight-standardised convolutions (Qiao et al. 2019, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization") with TF "SAME" padding and GroupNorm(32)
(Kolesnikov et al. 2020, "Big Transfer (BiT)"). Parameter names as timm's: ``stem.conv``,
``stem.norm``, ``stages.N.blocks.M.{downsample.conv, downsample.norm, conv1..3, norm1..3}``."""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.midas.midas.backbones.padding import Conv2dSame, MaxPool2dSame

# timm's StdConv2dSame for the ViT-hybrid backbone (and transformers' BiT) standardise with this eps.
WEIGHT_STANDARDIZATION_EPS = 1e-8


class StdConv2dSame(Conv2dSame):
    """Convolution with weight standardisation, W_hat = (W - mean) / sqrt(var + eps) over each
    output channel's fan-in (Qiao et al. 2019, eq. 5; biased variance), and TF "SAME" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 eps: float = WEIGHT_STANDARDIZATION_EPS):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=False)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """Computed in float32 at least (eps = 1e-8 vanishes in float16), returned in the weight's dtype."""
        weight = self.weight.float() if self.weight.dtype in (torch.float16, torch.bfloat16) else self.weight
        var, mean = torch.var_mean(weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return ((weight - mean) * torch.rsqrt(var + self.eps)).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.pad(x), self.standardized_weight(), self.bias)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm(32) followed by ReLU unless ``apply_act`` is False (timm ``GroupNormAct``)."""

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, apply_act: bool = True):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.act = nn.ReLU(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


def make_div(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% down (timm ``make_div``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class DownsampleConv(nn.Module):
    """The projection shortcut: 1x1 standardised convolution (with the block's stride) and GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = StdConv2dSame(in_channels, out_channels, 1, stride=stride)
        self.norm = GroupNormAct(out_channels, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Non-pre-activation bottleneck (ResNet v1.5: the stride on the 3x3 convolution), timm's
    ``resnetv2.Bottleneck``: relu(norm3(conv3(...conv1(x))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bottle_ratio: float = 0.25,
                 project: bool = False):
        super().__init__()
        mid_channels = make_div(out_channels * bottle_ratio)
        self.downsample = DownsampleConv(in_channels, out_channels, stride) if project else None
        self.conv1 = StdConv2dSame(in_channels, mid_channels, 1)
        self.norm1 = GroupNormAct(mid_channels)
        self.conv2 = StdConv2dSame(mid_channels, mid_channels, 3, stride=stride)
        self.norm2 = GroupNormAct(mid_channels)
        self.conv3 = StdConv2dSame(mid_channels, out_channels, 1)
        self.norm3 = GroupNormAct(out_channels, apply_act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class ResNetStage(nn.Module):
    """``depth`` bottlenecks; the first projects the shortcut and carries the stage's stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, depth: int):
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(in_channels if i == 0 else out_channels, out_channels, stride=stride if i == 0 else 1,
                       project=i == 0)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """The ViT-hybrid feature extractor: stem (7x7/2 convolution, GroupNorm + ReLU, 3x3/2 max
    pool, all "SAME") then stages of stride 1, 2, 2, ...: overall stride 4 * 2^(stages - 1)
    (16 for the three stages of ``vit_base_resnet50_384``). No final norm, no classifier
    (timm builds it with ``num_classes=0, global_pool=''``, ``preact=False``)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 9), widths: Sequence[int] = (256, 512, 1024),
                 stem_width: int = 64, in_chans: int = 3):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"ResNetV2 needs one width per stage, got layers {list(layers)} and widths {list(widths)}")
        self.stem = nn.Sequential(OrderedDict([
            ("conv", StdConv2dSame(in_chans, stem_width, 7, stride=2)),
            ("norm", GroupNormAct(stem_width)),
            ("pool", MaxPool2dSame(3, stride=2)),
        ]))
        stages, previous = [], stem_width
        for index, (depth, width) in enumerate(zip(layers, widths)):
            stages.append(ResNetStage(previous, width, stride=1 if index == 0 else 2, depth=depth))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.num_features = previous

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The output of every stage, shallowest first."""
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))
