"""TensorFlow "SAME" padding, as timm and gen-efficientnet apply it for weights trained in
TensorFlow/JAX: the output has ceil(size / stride) positions, and the padding that needs (split
with the smaller half first: top/left) is added from the input's size at each call. Where a
fixed symmetric padding gives the same result (stride 1, odd receptive field) it is used instead.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """(before, after) padding of one spatial axis for TF "SAME": the output has
    ceil(size / stride) positions; the smaller half of the padding goes before."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int],
             dilation: Sequence[int] = (1, 1), value: float = 0.0) -> torch.Tensor:
    """``x`` (..., H, W) padded for a "SAME" convolution or pooling window."""
    top, bottom = same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, [left, right, top, bottom], value=value)
    return x


def is_static_same_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> bool:
    """Whether "SAME" padding is the same symmetric padding for every input size."""
    return stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "SAME" padding (timm ``create_conv2d(..., padding='same')``,
    gen-efficientnet ``Conv2dSame``/``Conv2dSameExport``: the same numbers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False):
        static = is_static_same_padding(kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=dilation * (kernel_size - 1) // 2 if static else 0,
                         dilation=dilation, groups=groups, bias=bias)
        self.dynamic_padding = not static

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad_same(x, self.kernel_size, self.stride, self.dilation) if self.dynamic_padding else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.pad(x), self.weight, self.bias)


class MaxPool2dSame(nn.Module):
    """Max pooling with TF "SAME" padding: pads with -inf, so padding never wins (timm ``MaxPool2dSame``)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)
