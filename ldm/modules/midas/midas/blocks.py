"""The building blocks MiDaS and DPT share (original ``midas/blocks.py``): the encoder factory,
the "scratch" 3x3 convolutions that bring the encoder's four feature maps to one width, and the
RefineNet-style fusion blocks (Lin et al. 2017) that merge them from coarse to fine, each
upsampling by 2."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.midas.midas.backbones.efficientnet_lite import EfficientNetLite, tf_efficientnet_lite3
from ldm.modules.midas.midas.backbones.resnext import ResNet, ResNeXtSpec
from ldm.modules.midas.midas.vit import (
    _make_pretrained_vitb16_384,
    _make_pretrained_vitb_rn50_384,
    _make_pretrained_vitl16_384,
)

VIT_BACKBONES = ("vitl16_384", "vitb_rn50_384", "vitb16_384")
BACKBONES = VIT_BACKBONES + ("resnext101_wsl", "efficientnet_lite3")


def _make_encoder(backbone: str, features: int, groups: int = 1, expand: bool = False,
                  hooks: Optional[Sequence[int]] = None, use_readout: str = "ignore",
                  backbone_options: Optional[Mapping] = None):
    """``(pretrained, scratch)``: the encoder (its feature maps at 1/4, 1/8, 1/16, 1/32) and the
    ``layerN_rn`` convolutions to ``features`` channels (x1, x2, x4, x8 with ``expand``).
    ``backbone_options`` resizes the encoder (tests build toy versions; see each factory). The
    original's ``use_pretrained`` (download ImageNet weights) has no counterpart: weights come
    from a MiDaS file or a checkpoint."""
    if backbone in VIT_BACKBONES:
        make = {"vitl16_384": _make_pretrained_vitl16_384, "vitb_rn50_384": _make_pretrained_vitb_rn50_384,
                "vitb16_384": _make_pretrained_vitb16_384}[backbone]
        pretrained = make(use_readout=use_readout, hooks=hooks, options=backbone_options)
        in_shape = list(pretrained.features)
    elif backbone == "resnext101_wsl":
        pretrained = _make_pretrained_resnext101_wsl(backbone_options)
        in_shape = list(pretrained.stage_channels)
    elif backbone == "efficientnet_lite3":
        if backbone_options:
            raise TypeError(f"efficientnet_lite3 takes no backbone options, got {sorted(backbone_options)}")
        pretrained = _make_pretrained_efficientnet_lite3()
        in_shape = list(pretrained.stage_channels)
    else:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    return pretrained, _make_scratch(in_shape, features, groups=groups, expand=expand)


def _make_scratch(in_shape: Sequence[int], out_shape: int, groups: int = 1, expand: bool = False) -> nn.Module:
    scratch = nn.Module()
    widths = [out_shape * 2 ** i for i in range(4)] if expand else [out_shape] * 4
    for index, (width_in, width_out) in enumerate(zip(in_shape, widths), start=1):
        setattr(scratch, f"layer{index}_rn", nn.Conv2d(width_in, width_out, kernel_size=3, stride=1, padding=1,
                                                       bias=False, groups=groups))
    return scratch


class ResNetStages(nn.Module):
    """The original's ``pretrained`` for CNN encoders: ``layer1`` (stem and first stage(s)) to ``layer4``."""

    def __init__(self, layer1: nn.Module, layer2: nn.Module, layer3: nn.Module, layer4: nn.Module,
                 stage_channels: Sequence[int]):
        super().__init__()
        self.layer1, self.layer2, self.layer3, self.layer4 = layer1, layer2, layer3, layer4
        self.stage_channels = tuple(stage_channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The four stages' features, finest first (what the ViT encoders of DPT return too)."""
        layer_1 = self.layer1(x)
        layer_2 = self.layer2(layer_1)
        layer_3 = self.layer3(layer_2)
        return layer_1, layer_2, layer_3, self.layer4(layer_3)


def refine(scratch: nn.Module, layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """The RefineNet decoder every MiDaS model shares: each encoder level projected by
    ``scratch.layerN_rn`` and fused coarse to fine by ``scratch.refinenetN``."""
    layer_1, layer_2, layer_3, layer_4 = layers
    path_4 = scratch.refinenet4(scratch.layer4_rn(layer_4))
    path_3 = scratch.refinenet3(path_4, scratch.layer3_rn(layer_3))
    path_2 = scratch.refinenet2(path_3, scratch.layer2_rn(layer_2))
    return scratch.refinenet1(path_2, scratch.layer1_rn(layer_1))


def _make_resnet_backbone(resnet: ResNet) -> ResNetStages:
    return ResNetStages(nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1),
                        resnet.layer2, resnet.layer3, resnet.layer4, resnet.stage_channels)


def _make_pretrained_resnext101_wsl(options: Optional[Mapping] = None) -> ResNetStages:
    """ResNeXt-101 32x8d; ``options`` are :class:`ResNeXtSpec` fields."""
    return _make_resnet_backbone(ResNet(ResNeXtSpec(**dict(options or {}))))


def _make_efficientnet_backbone(effnet: EfficientNetLite) -> ResNetStages:
    channels = effnet.stage_channels
    return ResNetStages(nn.Sequential(effnet.conv_stem, effnet.bn1, effnet.act1, *effnet.blocks[0:2]),
                        nn.Sequential(*effnet.blocks[2:3]), nn.Sequential(*effnet.blocks[3:5]),
                        nn.Sequential(*effnet.blocks[5:9]), (channels[1], channels[2], channels[4], channels[6]))


def _make_pretrained_efficientnet_lite3() -> ResNetStages:
    return _make_efficientnet_backbone(tf_efficientnet_lite3())


class Interpolate(nn.Module):
    """``F.interpolate`` as a module."""

    def __init__(self, scale_factor: float, mode: str, align_corners: bool = False):
        super().__init__()
        self.scale_factor, self.mode, self.align_corners = scale_factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners)


class ResidualConvUnit(nn.Module):
    """MiDaS v2.1's pre-activation residual unit. The original's ReLU is in place on its input,
    so the skip adds relu(x), not x: relu(x) + conv2(relu(conv1(relu(x)))). Kept so, as the
    weights expect it."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.conv2(self.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """MiDaS v2.1 fusion: (x0 + unit1(x1)), unit2, then x2 bilinear upsampling (align_corners=True)."""

    def __init__(self, features: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        output = xs[0]
        if len(xs) == 2:
            # The original adds in place, after unit1 ran; unit1 leaves xs[0] as it was.
            output = output + self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        return F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)


class ResidualConvUnit_custom(nn.Module):
    """DPT's residual unit: x + conv2(act(conv1(act(x)))), optional BatchNorm after each convolution."""

    def __init__(self, features: int, activation: nn.Module, bn: bool):
        super().__init__()
        self.bn = bn
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=not bn)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=not bn)
        if bn:
            self.bn1 = nn.BatchNorm2d(features)
            self.bn2 = nn.BatchNorm2d(features)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.activation(x))
        if self.bn:
            out = self.bn1(out)
        out = self.conv2(self.activation(out))
        if self.bn:
            out = self.bn2(out)
        return out + x


class FeatureFusionBlock_custom(nn.Module):
    """DPT fusion: (x0 + unit1(x1)), unit2, x2 bilinear upsampling, then a 1x1 ``out_conv``
    (to half the width with ``expand``)."""

    def __init__(self, features: int, activation: nn.Module, deconv: bool = False, bn: bool = False,
                 expand: bool = False, align_corners: bool = True):
        super().__init__()
        self.deconv = deconv
        self.align_corners = align_corners
        self.expand = expand
        out_features = features // 2 if expand else features
        self.out_conv = nn.Conv2d(features, out_features, kernel_size=1, stride=1, padding=0, bias=True, groups=1)
        self.resConfUnit1 = ResidualConvUnit_custom(features, activation, bn)
        self.resConfUnit2 = ResidualConvUnit_custom(features, activation, bn)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        output = xs[0]
        if len(xs) == 2:
            output = output + self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        output = F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=self.align_corners)
        return self.out_conv(output)
