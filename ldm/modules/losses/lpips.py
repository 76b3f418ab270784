"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric", eq. 1) with a VGG16 backbone, laid out as taming-transformers
does (``net.slice<k>.<i>.*``, ``lin<k>.model.1.weight``, ``scaling_layer.*``).

Weights are never downloaded: they come from a local file or folder (see
:func:`resolve_lpips_path`). Without them the network cannot be used, and the autoencoder loss
trains without its perceptual term."""
from __future__ import annotations

import glob
import os
import re
import warnings
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ldm.util import load_checkpoint

LPIPS_WEIGHTS_ENV = "LDM_LPIPS_WEIGHTS"

# VGG16 feature layers (torchvision numbering): conv 3->64, 64->64, pool, 64->128, ... The five
# slices end after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
_VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
                14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
                26: (512, 512), 28: (512, 512)}
_VGG16_POOLS = (4, 9, 16, 23)
_SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class LPIPSWeightsError(ValueError):
    """The LPIPS weights file is missing or does not hold the LPIPS / VGG16 tensors."""


def _vgg16_layer(index: int) -> nn.Module:
    if index in _VGG16_CONVS:
        c_in, c_out = _VGG16_CONVS[index]
        return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
    if index in _VGG16_POOLS:
        return nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.ReLU(inplace=True)


class VGG16Features(nn.Module):
    """The convolutional part of VGG16 up to relu5_3, split into the five slices LPIPS reads."""

    def __init__(self):
        super().__init__()
        for k, (start, stop) in enumerate(_SLICE_BOUNDS, start=1):
            stage = nn.Sequential()
            for index in range(start, stop):
                stage.add_module(str(index), _vgg16_layer(index))
            setattr(self, f"slice{k}", stage)

    def forward(self, x: torch.Tensor) -> list:
        features = []
        for k in range(1, len(_SLICE_BOUNDS) + 1):
            x = getattr(self, f"slice{k}")(x)
            features.append(x)
        return features


class ScalingLayer(nn.Module):
    """Maps images in [-1, 1] to the input statistics the LPIPS VGG heads were calibrated on."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """The learned per-channel weights w_l of LPIPS as a bias-free 1x1 conv (optionally after
    dropout, which the original keeps in the layout: ``model.1.weight``)."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = False):
        super().__init__()
        layers = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(chn_in, chn_out, kernel_size=1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise features along the channel axis."""
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


def spatial_average(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    return x.mean([2, 3], keepdim=keepdim)


class LPIPS(nn.Module):
    """d(x, x0) = sum_l mean_hw || w_l * (f_l(x) - f_l(x0)) ||^2 with unit-normalised VGG16
    features f_l (LPIPS eq. 1). Returns one distance per image, shape (B, 1, 1, 1).

    ``weights_path``: a local file or folder with the weights (see :func:`load_lpips_weights`);
    None builds the network with random weights (for layout checks only). All parameters are
    frozen, as in the original.
    """

    def __init__(self, use_dropout: bool = True, weights_path: Optional[str] = None):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.chns = list(LPIPS_CHANNELS)
        self.net = VGG16Features()
        for k, channels in enumerate(self.chns):
            setattr(self, f"lin{k}", NetLinLayer(channels, use_dropout=use_dropout))
        if weights_path is not None:
            load_lpips_weights(self, weights_path)
        for param in self.parameters():
            param.requires_grad = False

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats0 = self.net(self.scaling_layer(input))
        feats1 = self.net(self.scaling_layer(target))
        val = 0
        for k in range(len(self.chns)):
            diff = (normalize_tensor(feats0[k]) - normalize_tensor(feats1[k])) ** 2
            val = val + spatial_average(getattr(self, f"lin{k}").model(diff), keepdim=True)
        return val


def resolve_lpips_path(path: Optional[str] = None) -> Optional[str]:
    """The LPIPS weights location: ``path`` when given, else ``$LDM_LPIPS_WEIGHTS``, else None.
    A location that is given but does not exist is an error, not a silent fallback."""
    path = path or os.environ.get(LPIPS_WEIGHTS_ENV) or None
    if path is None:
        return None
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise LPIPSWeightsError(f"LPIPS weights not found at {path} (from the loss config's lpips_path "
                                f"or ${LPIPS_WEIGHTS_ENV})")
    return path


_PREFIXES = ("loss.perceptual_loss.", "perceptual_loss.", "first_stage_model.loss.perceptual_loss.")
_TORCHVISION_FEATURE = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def _lpips_keys_from(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the tensors of any supported file to LPIPS keys: an LPIPS state dict (possibly
    inside an autoencoder training checkpoint), LPIPS' ``vgg.pth`` (lin layers only) or a
    torchvision VGG16 state dict (``features.<i>.*``)."""
    out = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        match = _TORCHVISION_FEATURE.match(key)
        if match:
            index = int(match.group(1))
            slice_no = next((k for k, (a, b) in enumerate(_SLICE_BOUNDS, start=1) if a <= index < b), None)
            if slice_no is None:
                continue
            key = f"net.slice{slice_no}.{index}.{match.group(2)}"
        if key.startswith(("net.", "lin", "scaling_layer.")):
            out[key] = value
    return out


def _files_in(path: str) -> list:
    if os.path.isfile(path):
        return [path]
    patterns = ("*.pth", "*.pt", "*.ckpt", "*.safetensors", "*.bin")
    files = sorted(f for pattern in patterns for f in glob.glob(os.path.join(path, pattern)))
    if not files:
        raise LPIPSWeightsError(f"no weight files (.pth, .pt, .ckpt, .safetensors, .bin) in {path}")
    return files


def load_lpips_weights(model: LPIPS, path: str) -> None:
    """Load LPIPS weights from ``path``: one file holding all of them, or a folder whose files
    together do (for example LPIPS' ``vgg.pth`` next to torchvision's ``vgg16-397923af.pth``).
    Raises :class:`LPIPSWeightsError` naming what is missing."""
    tensors: Dict[str, torch.Tensor] = {}
    for file in _files_in(path):
        state_dict, _ = load_checkpoint(file)
        tensors.update(_lpips_keys_from(state_dict))
    expected = {k for k in model.state_dict() if not k.startswith("scaling_layer.")}
    missing = sorted(expected - set(tensors))
    if missing:
        raise LPIPSWeightsError(f"{path} lacks {len(missing)} LPIPS tensors (e.g. {missing[0]}); give LPIPS' "
                                "vgg.pth together with torchvision's VGG16 weights, or a full LPIPS state dict")
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False)


_warned_without_lpips = False


def perceptual_loss_or_none(perceptual_weight: float, lpips_path: Optional[str] = None):
    """``(LPIPS module, perceptual_weight)`` when the weights are available locally, else
    ``(None, 0.0)`` with a single clear warning per process: the perceptual term is then left
    out of training instead of using a randomly initialised VGG."""
    global _warned_without_lpips
    if perceptual_weight <= 0:
        return None, perceptual_weight
    path = resolve_lpips_path(lpips_path)
    if path is not None:
        return LPIPS(weights_path=path).eval(), perceptual_weight
    if not _warned_without_lpips:
        _warned_without_lpips = True
        warnings.warn(f"LPIPS weights are not available (set the loss param lpips_path or ${LPIPS_WEIGHTS_ENV} "
                      "to LPIPS' vgg.pth plus torchvision's VGG16 weights); training WITHOUT the perceptual "
                      f"loss (perceptual_weight {perceptual_weight} -> 0)", stacklevel=3)
    return None, 0.0
