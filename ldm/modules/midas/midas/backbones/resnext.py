"""torchvision's ResNet/ResNeXt (He et al. 2016; Xie et al. 2017, "Aggregated Residual
Transformations") with torchvision's parameter names (``conv1``, ``bn1``, ``layerN.M.{conv1..3,
bn1..3, downsample.0, downsample.1}``), for MiDaS v2.1's encoder: ResNeXt-101 32x8d, whose
weakly-supervised Instagram weights (Mahajan et al. 2018, "WSL") MiDaS fine-tuned."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ResNeXtSpec:
    """Blocks per stage, cardinality (groups), width per group, and the stem/first-stage width
    (torchvision's ``inplanes`` 64; stage planes are width * 1, 2, 4, 8). Default: ResNeXt-101 32x8d."""
    layers: Tuple[int, int, int, int] = (3, 4, 23, 3)
    groups: int = 32
    width_per_group: int = 8
    width: int = 64


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride on the grouped 3x3 convolution)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """The convolutional part of torchvision's ``ResNet`` (no pooling head, no classifier: MiDaS
    uses only the stem and the four stages)."""

    def __init__(self, spec: ResNeXtSpec = ResNeXtSpec()):
        super().__init__()
        self.spec = spec
        self.inplanes = spec.width
        self.conv1 = nn.Conv2d(3, spec.width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(spec.width, spec.layers[0])
        self.layer2 = self._make_layer(spec.width * 2, spec.layers[1], stride=2)
        self.layer3 = self._make_layer(spec.width * 4, spec.layers[2], stride=2)
        self.layer4 = self._make_layer(spec.width * 8, spec.layers[3], stride=2)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.spec.groups, self.spec.width_per_group)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, groups=self.spec.groups, base_width=self.spec.width_per_group)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def stage_channels(self) -> Tuple[int, int, int, int]:
        return tuple(self.spec.width * 2 ** i * Bottleneck.expansion for i in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
