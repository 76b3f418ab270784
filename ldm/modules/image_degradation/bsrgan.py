"""BSRGAN's degradation model (Zhang, Liang, Van Gool, Timofte 2021, "Designing a Practical Degradation Model
for Deep Blind Image Super-Resolution") with the paper's ranges, under the original module path and names.

``degradation_bsrgan_variant`` is what latent-diffusion's super-resolution data calls (``degradation_fn_bsr``):
a uint8 image in, ``{"image": degraded uint8 image}`` of 1 / sf the size out. The building blocks live in
:mod:`~ldm.modules.image_degradation.kernels`, ``degradations`` and ``pipelines``; this module binds the
BSRGAN ranges (blur widths (4 + sf) / (2 + 0.2 sf), kernels 7-25 px, JPEG quality 30-95, noise 2-25 / 255).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from ldm.modules.image_degradation import degradations, pipelines
from ldm.modules.image_degradation.original_names import *  # noqa: F401,F403 (the original names)

SETTINGS = degradations.BSRGAN


def add_blur(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Random anisotropic or isotropic Gaussian blur, kernels of 7 to 25 pixels."""
    return degradations.add_blur(img, sf, SETTINGS)


def add_JPEG_noise(img: np.ndarray) -> np.ndarray:
    """JPEG compression at a random quality factor in [30, 95]."""
    return degradations.add_JPEG_noise(img, SETTINGS.jpeg_quality)


def degradation_bsrgan(img: np.ndarray, sf: int = 4, lq_patchsize: int = 72,
                       isp_model: Optional[Any] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Degrade an HxWxC float image in [0, 1]; returns the (lq, hq) patch pair, lq_patchsize and
    lq_patchsize * sf pixels a side."""
    return pipelines.degradation_bsrgan(img, sf, lq_patchsize, isp_model, SETTINGS)


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Optional[Any] = None
                               ) -> Dict[str, np.ndarray]:
    """Degrade a whole uint8 HxWx3 image: ``{"image": uint8 (H // sf) x (W // sf) x 3}``."""
    return pipelines.degradation_bsrgan_variant(image, sf, isp_model, SETTINGS)


def degradation_bsrgan_plus(img: np.ndarray, sf: int = 4, shuffle_prob: float = 0.5, use_sharp: bool = True,
                            lq_patchsize: int = 64, isp_model: Optional[Any] = None
                            ) -> Tuple[np.ndarray, np.ndarray]:
    """BSRGAN combined with Real-ESRGAN's degradations; returns the (lq, hq) patch pair."""
    return pipelines.degradation_bsrgan_plus(img, sf, shuffle_prob, use_sharp, lq_patchsize, isp_model, SETTINGS)
