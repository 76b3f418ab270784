"""The Inception-v3 network that FID, KID and the Inception Score are computed with: the TensorFlow
graph ``inception-2015-12-05`` of the original FID code (Heusel et al. 2017), as the PyTorch FID
tools run it, written here without torchvision.

Weights: ``pt_inception-2015-12-05-6726825d.pth``, the state dict pytorch-fid ships (a release
asset of github.com/mseitzer/pytorch-fid, ``fid_weights``; torch-fidelity and torchmetrics use the
same numbers). Nothing is downloaded: fetch it once and pass its path (``--inception PATH``).

The network is torchvision's ``Inception3`` layout (1008 classes, no auxiliary head) with the four
changes that make it the TF graph: the average pools of the A, C and first E blocks leave the zero
padding out of the mean (TF's ``avg_pool`` with SAME padding), and the last E block pools its fourth
branch with a 3x3 max pool instead. State-dict keys are those of the file (``Conv2d_1a_3x3.conv.weight``,
``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``, ...).

Preprocessing as pytorch-fid: 8-bit RGB divided by 255, resized to 299 x 299 bilinearly
(``F.interpolate``, ``align_corners=False``, no antialiasing), then mapped to [-1, 1]. torch-fidelity
resizes with its own TF-1 style bilinear kernel instead, so for inputs that are not 299 x 299 the
two tools' features (and FIDs) differ slightly; for 299 x 299 inputs they agree.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3

Kernel = Union[int, Tuple[int, int]]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as TF), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Kernel, stride: int = 1,
                 padding: Kernel = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _chain(x: torch.Tensor, layers: Sequence[nn.Module]) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over the pixels inside the image only (TF SAME padding)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, (self.branch5x5_1, self.branch5x5_2)),
            _chain(x, (self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3)),
            self.branch_pool(_tf_average_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): strided 3x3, strided double 3x3 and max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            _chain(x, (self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3)),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17 x 17 block (Mixed_6b-e) with factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, (self.branch7x7_1, self.branch7x7_2, self.branch7x7_3)),
            _chain(x, (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                       self.branch7x7dbl_5)),
            self.branch_pool(_tf_average_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            _chain(x, (self.branch3x3_1, self.branch3x3_2)),
            _chain(x, (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4)),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    """8 x 8 block (Mixed_7b/c) with split 1x3 / 3x1 heads; ``max_pool`` for Mixed_7c, whose
    pooled branch the TF graph max-pools."""

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.branch3x3_1(x)
        deep = _chain(x, (self.branch3x3dbl_1, self.branch3x3dbl_2))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_average_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(wide), self.branch3x3_2b(wide),
            self.branch3x3dbl_3a(deep), self.branch3x3dbl_3b(deep),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: images in [-1, 1] at 299 x 299 -> (2048-d pool features, 1008 logits
    without the fc bias).

    The logits are torch-fidelity's ``logits_unbiased``, the input of its Inception Score; the
    pool features are what FID, KID and precision/recall compare."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = _chain(x, (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = _chain(x, (self.Conv2d_3b_1x1, self.Conv2d_4a_3x3))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = _chain(x, (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                       self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c))
        features = x.mean(dim=(2, 3))
        return features, features @ self.fc.weight.T


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float ``(N, 3, 299, 299)`` in [-1, 1], as pytorch-fid: /255,
    bilinear resize (``align_corners=False``), 2x - 1."""
    x = images.float() / 255.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


def missing_weights_message(path: str) -> str:
    return (f"Inception weights {path} not found: FID/KID/IS/precision-recall need {WEIGHTS_FILE} "
            f"(pytorch-fid's release asset, {WEIGHTS_URL}); download it once and pass --inception PATH")


def load_fid_inception(path: str, device: Union[str, torch.device] = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with the weights of ``path`` (the pytorch-fid state dict), in eval mode.
    Raises FileNotFoundError naming the file and where to get it when ``path`` does not exist."""
    from ldm.util import load_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(missing_weights_message(path))
    state_dict, _ = load_checkpoint(path)
    model = FIDInceptionV3()
    model.load_state_dict(state_dict)
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def inception_outputs(model: FIDInceptionV3, batches: Iterable[np.ndarray], total: Optional[int] = None,
                      desc: str = "inception",
                      device: Union[str, torch.device] = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """(pool features (N, 2048), bias-free logits (N, 1008)) in float64 of uint8 ``(n, H, W, 3)``
    batches, with a progress bar over images."""
    features, logits = [], []
    with tqdm(total=total, desc=desc, unit="img", disable=total is not None and total < 2) as bar:
        for batch in batches:
            images = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2)
            pooled, unbiased = model(preprocess(images))
            features.append(pooled.double().cpu().numpy())
            logits.append(unbiased.double().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(features), np.concatenate(logits)
