"""MiDaS as SD 2's depth model uses it (original ``ldm/modules/midas/api.py``):
``MiDaSInference(model_type)`` is the ``depth_stage_config`` of ``v2-midas-inference.yaml``, and
``load_midas_transform(model_type)`` prepares its input (``ldm.data.util.AddMiDaS``).

Nothing is downloaded. The weights come from the SD 2 depth checkpoint (its ``depth_model.*``
tensors) or from a released MiDaS file given as ``path`` (the names in ``ISL_PATHS``); without
either the network has random weights, which is said once per process.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.freezing import keep_in_eval_mode
from ldm.modules.midas.midas.dpt_depth import DPTDepthModel
from ldm.modules.midas.midas.midas_net import MidasNet
from ldm.modules.midas.midas.midas_net_custom import MidasNet_small
from ldm.modules.midas.midas.transforms import Compose, NormalizeImage, PrepareForNet, Resize

# The released weight files of each model type (isl-org/MiDaS and DPT releases), for ``path``.
ISL_PATHS = {
    "dpt_large": "midas_models/dpt_large-midas-2f21e586.pt",
    "dpt_hybrid": "midas_models/dpt_hybrid-midas-501f0c75.pt",
    "midas_v21": "midas_models/midas_v21-f6b98070.pt",
    "midas_v21_small": "midas_models/midas_v21_small-70d6b9c8.pt",
}
MODEL_TYPES = tuple(ISL_PATHS)

DPT_NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # [0, 1] -> [-1, 1]
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# model type -> (net width, net height, resize method, (mean, std))
TRANSFORM_SETTINGS = {
    "dpt_large": (384, 384, "minimal", DPT_NORMALIZATION),
    "dpt_hybrid": (384, 384, "minimal", DPT_NORMALIZATION),
    "midas_v21": (384, 384, "upper_bound", IMAGENET_NORMALIZATION),
    "midas_v21_small": (256, 256, "upper_bound", IMAGENET_NORMALIZATION),
}

_said_random = set()


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"MiDaS model_type must be one of {list(MODEL_TYPES)}, got {model_type!r}")


def load_midas_transform(model_type: str) -> Callable[[Dict], Dict]:
    """The input preparation of ``model_type``, on samples ``{"image": HWC array in [0, 1]}``:
    resize keeping the aspect ratio to sides that are multiples of 32 near the network size (DPT:
    384, "minimal" change; v2.1: 384, v2.1 small: 256, fitting inside), bicubic; normalise (DPT:
    mean = std = 0.5, i.e. [-1, 1]; v2.1: ImageNet statistics); CHW float32."""
    _check_model_type(model_type)
    net_w, net_h, resize_mode, (mean, std) = TRANSFORM_SETTINGS[model_type]
    return Compose([
        Resize(net_w, net_h, resize_target=None, keep_aspect_ratio=True, ensure_multiple_of=32,
               resize_method=resize_mode, image_interpolation_method="bicubic"),
        NormalizeImage(mean=mean, std=std),
        PrepareForNet(),
    ])


def transform_images(images: torch.Tensor, model_type: str) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] (Stable Diffusion's convention) as the input of
    ``model_type``: what ``load_midas_transform`` (``ldm.data.util.AddMiDaS``) makes of each,
    done on the batch in torch: [0, 1], bicubic resize to the transform's size, normalisation."""
    _check_model_type(model_type)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    net_w, net_h, resize_mode, (mean, std) = TRANSFORM_SETTINGS[model_type]
    resize = Resize(net_w, net_h, keep_aspect_ratio=True, ensure_multiple_of=32, resize_method=resize_mode)
    width, height = resize.get_size(images.shape[3], images.shape[2])
    x = F.interpolate((images.float() + 1.0) * 0.5, size=(height, width), mode="bicubic", align_corners=False)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(images.dtype)


def build_model(model_type: str, path: Optional[Union[str, os.PathLike]] = None, **options) -> nn.Module:
    """The network of ``model_type`` (weights from ``path`` when given). ``options`` reach the
    network's constructor, e.g. ``features`` and ``backbone_options`` for toy-sized models."""
    _check_model_type(model_type)
    if model_type == "dpt_large":
        return DPTDepthModel(path=path, backbone="vitl16_384", non_negative=True, **options)
    if model_type == "dpt_hybrid":
        return DPTDepthModel(path=path, backbone="vitb_rn50_384", non_negative=True, **options)
    if model_type == "midas_v21":
        return MidasNet(path, non_negative=True, **options)
    return MidasNet_small(path, **{"features": 64, "backbone": "efficientnet_lite3", "exportable": True,
                                   "non_negative": True, "blocks": {"expand": True}, **options})


def load_model(model_type: str, path: Optional[Union[str, os.PathLike]] = None,
               **options) -> Tuple[nn.Module, Callable[[Dict], Dict]]:
    """(network in eval mode, its input transform), as the original's ``load_model``; the
    weights from ``path`` when given, else random (said once per process and model type)."""
    model = build_model(model_type, path, **options)
    if path is None:
        _say_random_weights(model_type, "built")
    return model.eval(), load_midas_transform(model_type)


def _say_random_weights(model_type: str, what: str) -> None:
    """Warn, once per process and model type, that a MiDaS network has random weights."""
    if model_type in _said_random:
        return
    _said_random.add(model_type)
    warnings.warn(f"MiDaS {model_type} {what} with random weights: they come from a checkpoint that holds them "
                  f"(the SD 2 depth checkpoint's depth_model.*) or from a local MiDaS file passed as path "
                  f"(released as {os.path.basename(ISL_PATHS[model_type])}); nothing is downloaded", stacklevel=4)


class MiDaSInference(nn.Module):
    """Depth estimation for SD 2 depth-to-image: ``model`` is the MiDaS network of
    ``model_type``, kept in eval mode whatever its parent's mode (the original's
    ``disabled_train``). ``path``: a local MiDaS weights file; ``options``: see ``build_model``."""

    MODEL_TYPES_TORCH_HUB = ["DPT_Large", "DPT_Hybrid", "MiDaS_small"]
    MODEL_TYPES_ISL = list(MODEL_TYPES)

    def __init__(self, model_type: str, path: Optional[Union[str, os.PathLike]] = None, **options):
        super().__init__()
        self.model_type = model_type
        self.model = keep_in_eval_mode(build_model(model_type, path, **options).eval())
        self.has_weights = path is not None  # else until a state dict (the SD 2 checkpoint's) is loaded

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.has_weights = self.has_weights or any(key.startswith(prefix + "model.") for key in state_dict)

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] as this model's input (see ``transform_images``)."""
        return transform_images(images, self.model_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Disparity (B, 1, H, W), larger = nearer, of images (B, 3, H, W) prepared by
        ``load_midas_transform`` (for DPT: RGB in [-1, 1]; H and W multiples of 32). Run without
        gradients; the prediction is resized to the input bicubically (align_corners=False)."""
        if not self.has_weights:
            _say_random_weights(self.model_type, "runs")
        with torch.no_grad():
            prediction = self.model(x)
            prediction = F.interpolate(prediction.unsqueeze(1), size=x.shape[2:], mode="bicubic",
                                       align_corners=False)
        return prediction
