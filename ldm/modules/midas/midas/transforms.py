"""MiDaS input preparation (original ``midas/transforms.py``), on samples ``{"image": HWC float
array, ...}``: resize keeping the aspect ratio to a multiple of 32 near the network's size,
normalise, and lay out as CHW float32.

The original resizes with OpenCV's ``cv2.INTER_CUBIC``; this one uses ``torch``'s bicubic
interpolation (``align_corners=False``, no antialiasing), the same kernel (Keys' cubic
convolution, a = -0.75), the same half-pixel sampling grid and the same edge clamping, so the
two agree up to floating-point rounding. Targets (``disparity``, ``depth``, ``mask``) use
nearest-neighbour sampling, floor(dst * scale) as ``cv2.INTER_NEAREST``."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_METHODS = ("lower_bound", "upper_bound", "minimal")


def resize_array(array: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """An HW or HWC array resized to ``height`` x ``width`` with torch ``mode`` ("bicubic" or
    "nearest"); floats keep their dtype, other types become float32."""
    dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.float32
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
    planar = tensor[None, None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)[None]
    if mode == "bicubic":
        resized = F.interpolate(planar, size=(height, width), mode="bicubic", align_corners=False)
    else:
        resized = F.interpolate(planar, size=(height, width), mode=mode)
    resized = resized[0, 0] if tensor.dim() == 2 else resized[0].permute(1, 2, 0)
    return resized.numpy()


class Resize:
    """Resize a sample to (about) ``width`` x ``height``.

    ``keep_aspect_ratio`` scales both sides alike: by the larger factor for "lower_bound" (the
    result covers the target), the smaller for "upper_bound" (it fits inside), or the one nearer
    1 for "minimal" (as little change as possible). Sides are then rounded to
    ``ensure_multiple_of`` (half to even, as numpy rounds; down or up where the bound requires).
    ``image_interpolation_method`` is "bicubic" (the original's ``cv2.INTER_CUBIC``) or "nearest".
    """

    def __init__(self, width: int, height: int, resize_target: bool = True, keep_aspect_ratio: bool = False,
                 ensure_multiple_of: int = 1, resize_method: str = "lower_bound",
                 image_interpolation_method: str = "bicubic"):
        if resize_method not in RESIZE_METHODS:
            raise ValueError(f"resize_method must be one of {list(RESIZE_METHODS)}, got {resize_method!r}")
        if image_interpolation_method not in ("bicubic", "nearest"):
            raise ValueError(f"image_interpolation_method must be 'bicubic' or 'nearest', "
                             f"got {image_interpolation_method!r}")
        self.width, self.height = width, height
        self.resize_target = resize_target
        self.keep_aspect_ratio = keep_aspect_ratio
        self.multiple_of = ensure_multiple_of
        self.resize_method = resize_method
        self.image_interpolation_method = image_interpolation_method

    def constrain_to_multiple_of(self, x: float, min_val: int = 0, max_val: Optional[int] = None) -> int:
        y = int(np.round(x / self.multiple_of) * self.multiple_of)
        if max_val is not None and y > max_val:
            y = int(np.floor(x / self.multiple_of) * self.multiple_of)
        if y < min_val:
            y = int(np.ceil(x / self.multiple_of) * self.multiple_of)
        return y

    def get_size(self, width: int, height: int) -> Tuple[int, int]:
        """(new width, new height) for an image of ``width`` x ``height``."""
        scale_height = self.height / height
        scale_width = self.width / width
        if self.keep_aspect_ratio:
            if self.resize_method == "lower_bound":
                scale = max(scale_width, scale_height)
            elif self.resize_method == "upper_bound":
                scale = min(scale_width, scale_height)
            else:  # minimal: the factor nearer 1 (height on a tie)
                scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height
            scale_height = scale_width = scale
        if self.resize_method == "lower_bound":
            return (self.constrain_to_multiple_of(scale_width * width, min_val=self.width),
                    self.constrain_to_multiple_of(scale_height * height, min_val=self.height))
        if self.resize_method == "upper_bound":
            return (self.constrain_to_multiple_of(scale_width * width, max_val=self.width),
                    self.constrain_to_multiple_of(scale_height * height, max_val=self.height))
        return (self.constrain_to_multiple_of(scale_width * width),
                self.constrain_to_multiple_of(scale_height * height))

    def __call__(self, sample: Dict) -> Dict:
        image = sample["image"]
        if image.ndim != 3:
            raise ValueError(f"the MiDaS transform expects an HWC image, got shape {image.shape}")
        width, height = self.get_size(image.shape[1], image.shape[0])
        sample["image"] = resize_array(image, width, height, self.image_interpolation_method)
        if self.resize_target:
            for key in ("disparity", "depth"):
                if key in sample:
                    sample[key] = resize_array(sample[key], width, height, "nearest")
            if "mask" in sample:
                sample["mask"] = resize_array(sample["mask"].astype(np.float32), width, height, "nearest").astype(bool)
        return sample


class NormalizeImage:
    """(image - mean) / std, per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean)
        self.std = np.asarray(std)

    def __call__(self, sample: Dict) -> Dict:
        sample["image"] = (sample["image"] - self.mean) / self.std
        return sample


class PrepareForNet:
    """HWC -> CHW contiguous float32 for the image; float32 targets and mask."""

    def __call__(self, sample: Dict) -> Dict:
        sample["image"] = np.ascontiguousarray(np.transpose(sample["image"], (2, 0, 1))).astype(np.float32)
        if "mask" in sample:
            sample["mask"] = np.ascontiguousarray(sample["mask"].astype(np.float32))
        for key in ("disparity", "depth"):
            if key in sample:
                sample[key] = np.ascontiguousarray(sample[key].astype(np.float32))
        return sample


class Compose:
    """Apply transforms in order (the one thing the original took from torchvision here)."""

    def __init__(self, transforms: Sequence[Callable[[Dict], Dict]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Dict) -> Dict:
        for transform in self.transforms:
            sample = transform(sample)
        return sample
