"""Whether an image of the shapes world shows the "dark" style (:data:`ldm.data.shapes.STYLES`): the
measure behind ``benchmarks/lora_style.py``.

The background is every pixel the detector (:mod:`ldm.evaluation.detector`) does not count as
object: HSV saturation <= ``SATURATION_MIN`` or value <= ``VALUE_MIN``. An image shows the dark
style when the mean HSV value (max of R, G, B) of its background is below
:data:`DARK_BACKGROUND_MAX` = 0.08. Renders in the dark style have background values in
[0, 0.05] (antialiased object edges add a little), default renders in [0.12, 0.92], so the
threshold separates the two with margin on both sides; ``docs/LORA.md`` reports its accuracy
on renders of both styles.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ldm.evaluation.detector import SATURATION_MIN, VALUE_MIN, as_unit_rgb, hsv

DARK_BACKGROUND_MAX = 0.08


def background_value(image: np.ndarray) -> float:
    """Mean HSV value of the background pixels of an (H, W, 3) image (uint8, or float in [0, 1]);
    1.0 when every pixel is object (no background: not dark)."""
    _, saturation, value = hsv(as_unit_rgb(image))
    background = (saturation <= SATURATION_MIN) | (value <= VALUE_MIN)
    return float(value[background].mean()) if background.any() else 1.0


def shows_dark_style(image: np.ndarray) -> bool:
    """Whether the image's background is dark (mean value below :data:`DARK_BACKGROUND_MAX`)."""
    return background_value(image) < DARK_BACKGROUND_MAX


def dark_style_fraction(images: Sequence[np.ndarray]) -> float:
    """The fraction of ``images`` that show the dark style."""
    if not len(images):
        raise ValueError("no images to measure")
    return float(np.mean([shows_dark_style(image) for image in images]))
