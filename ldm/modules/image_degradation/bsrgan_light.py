"""The lighter BSR degradations latent-diffusion trained its x4 super-resolution model with (``bsr_sr`` config,
``degradation: bsrgan_light``), under the original module path and names.

Against :mod:`~ldm.modules.image_degradation.bsrgan`: blur widths a quarter as large and smaller kernels
(anisotropic 5-14 px, isotropic 5-7 px), JPEG quality 80-95, Gaussian noise 2-8 / 255 in
``degradation_bsrgan`` and 1-2 / 255 in the variant, whose blur step runs once (not twice) and which resizes
(rather than blur-and-subsample) with p = 0.8. ``degradation_bsrgan_variant(..., up=True)`` enlarges the
result back to the input size with bicubic interpolation (Stability AI's addition).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from ldm.modules.image_degradation import degradations, pipelines
from ldm.modules.image_degradation.original_names import *  # noqa: F401,F403 (the original names)

SETTINGS = degradations.BSRGAN_LIGHT


def add_blur(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Random anisotropic (5-14 px) or isotropic (5-7 px) Gaussian blur, a quarter of BSRGAN's widths."""
    return degradations.add_blur(img, sf, SETTINGS)


def add_JPEG_noise(img: np.ndarray) -> np.ndarray:
    """JPEG compression at a random quality factor in [80, 95]."""
    return degradations.add_JPEG_noise(img, SETTINGS.jpeg_quality)


def degradation_bsrgan(img: np.ndarray, sf: int = 4, lq_patchsize: int = 72,
                       isp_model: Optional[Any] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Degrade an HxWxC float image in [0, 1] (noise 2-8 / 255); returns the (lq, hq) patch pair."""
    return pipelines.degradation_bsrgan(img, sf, lq_patchsize, isp_model, SETTINGS)


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Optional[Any] = None,
                               up: bool = False) -> Dict[str, np.ndarray]:
    """Degrade a whole uint8 HxWx3 image: ``{"image": uint8 (H // sf) x (W // sf) x 3}``, or H x W x 3 again
    with ``up``."""
    return pipelines.degradation_bsrgan_variant(image, sf, isp_model, SETTINGS, up=up)
