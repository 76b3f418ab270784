"""Pairs of a high-resolution crop and its degraded low-resolution copy, the data of latent-diffusion's
super-resolution models and of its ``ImageNetSR`` autoencoder configs.

Each example of the base dataset (which must hold ``file_path_``) becomes: a square crop whose side
is a random fraction in [``min_crop_f``, ``max_crop_f``] of the image's shorter side (random or
centred), resized to ``size`` with area interpolation (``image``), and that image degraded to
``size / downscale_f`` (``LR_image``), both HxWx3 float32 in [-1, 1]; the base example's other
keys are kept.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import DatasetError
from ldm.data.image_paths import crop, read_rgb, smallest_max_size, to_unit_range
from ldm.modules.image_degradation import degradation_fn_bsr, degradation_fn_bsr_light
from ldm.modules.image_degradation.resampling import (
    INTER_AREA,
    INTER_CUBIC,
    INTER_LANCZOS4,
    INTER_LINEAR,
    INTER_NEAREST,
)

# The original's names for resizing the crop down: OpenCV interpolations (albumentations'
# SmallestMaxSize there) and Pillow filters (torchvision's resize of a PIL image there).
CV_INTERPOLATIONS = {"cv_nearest": INTER_NEAREST, "cv_bilinear": INTER_LINEAR, "cv_bicubic": INTER_CUBIC,
                     "cv_area": INTER_AREA, "cv_lanczos": INTER_LANCZOS4}
PIL_INTERPOLATIONS = {"pil_nearest": Image.Resampling.NEAREST, "pil_bilinear": Image.Resampling.BILINEAR,
                      "pil_bicubic": Image.Resampling.BICUBIC, "pil_box": Image.Resampling.BOX,
                      "pil_hamming": Image.Resampling.HAMMING, "pil_lanczos": Image.Resampling.LANCZOS}
DEGRADATIONS = ("bsrgan", "bsrgan_light", *CV_INTERPOLATIONS, *PIL_INTERPOLATIONS)


def _bsr(degrade: Callable, sf: int, image: np.ndarray) -> np.ndarray:
    return degrade(image, sf=sf)["image"]


def _pil_resize(resample, size: int, image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), resample=resample), dtype=np.uint8)


def degradation_process(degradation: str, downscale_f: int, lr_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The function that turns a square uint8 HxWx3 crop into its low-resolution copy, by name."""
    if degradation == "bsrgan":
        return partial(_bsr, degradation_fn_bsr, downscale_f)
    if degradation == "bsrgan_light":
        return partial(_bsr, degradation_fn_bsr_light, downscale_f)
    if degradation in CV_INTERPOLATIONS:
        return partial(smallest_max_size, size=lr_size, interpolation=CV_INTERPOLATIONS[degradation])
    if degradation in PIL_INTERPOLATIONS:
        return partial(_pil_resize, PIL_INTERPOLATIONS[degradation], lr_size)
    raise DatasetError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")


class SuperresPairs(Dataset):
    """High-/low-resolution pairs of the images of ``get_base()`` (see the module docstring);
    the parameters are those of the original ``ImageNetSR``."""

    def __init__(self, size: Optional[int] = None, degradation: Optional[str] = None, downscale_f: int = 4,
                 min_crop_f: float = 0.5, max_crop_f: float = 1.0, random_crop: bool = True):
        if not size or size < 1:
            raise DatasetError(f"size must be a whole number of pixels >= 1, got {size!r}")
        if downscale_f < 1 or size % downscale_f:
            raise DatasetError(f"size ({size}) must be a multiple of downscale_f ({downscale_f})")
        if not 0 < min_crop_f <= max_crop_f <= 1.0:
            raise DatasetError(f"need 0 < min_crop_f <= max_crop_f <= 1, got {min_crop_f} and {max_crop_f}")
        self.size = size
        self.LR_size = size // downscale_f
        self.min_crop_f = min_crop_f
        self.max_crop_f = max_crop_f
        self.center_crop = not random_crop
        self.degradation_process = degradation_process(degradation, downscale_f, self.LR_size)
        self.base = self.get_base()

    def get_base(self) -> Dataset:
        """The dataset whose examples name the image files (``file_path_``)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Dict[str, object]:
        example = dict(self.base[i])
        image = read_rgb(example["file_path_"])
        crop_side = max(1, int(min(image.shape[:2]) * np.random.uniform(self.min_crop_f, self.max_crop_f)))
        image = crop(image, crop_side, crop_side, random_crop=not self.center_crop)
        image = smallest_max_size(image, self.size, INTER_AREA)
        lr_image = self.degradation_process(image)
        example["image"] = to_unit_range(image)
        example["LR_image"] = to_unit_range(lr_image)
        return example
