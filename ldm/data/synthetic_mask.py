"""Large random inpainting masks (LaMa, Suvorov et al. 2022, sec. 3.2: "wide" masks): either a chain of
thick line segments or a few (rounded) boxes, as the SD 2 inpainting model was trained with. The modes
and their ranges are those of Stability AI's ``ldm.data.inpainting.synthetic_mask``.

Ranges are in pixels of the mode's nominal resolution (256 or 512); a smaller image gets them scaled
down with it (the originals fail on images too small for their boxes), a larger one unchanged.
Every draw comes from the ``prng`` given (the original drew the two coin flips from NumPy's global
generator instead).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from PIL import Image, ImageDraw

# Chains: p_irr = chance of a chain (else boxes), number of segments, longest and widest segment.
# Boxes: number, side lengths, margin to the border.
SETTINGS: Dict[str, Dict[str, int]] = {
    "256narrow": dict(p_irr=1, min_n_irr=4, max_n_irr=50, max_l_irr=40, max_w_irr=10,
                      min_n_box=None, max_n_box=None, min_s_box=None, max_s_box=None, marg=None),
    "256train": dict(p_irr=0.5, min_n_irr=1, max_n_irr=5, max_l_irr=200, max_w_irr=100,
                     min_n_box=1, max_n_box=4, min_s_box=30, max_s_box=150, marg=10),
    "512train": dict(p_irr=0.5, min_n_irr=1, max_n_irr=5, max_l_irr=450, max_w_irr=250,
                     min_n_box=1, max_n_box=4, min_s_box=30, max_s_box=300, marg=10),
    "512train-large": dict(p_irr=0.5, min_n_irr=1, max_n_irr=5, max_l_irr=450, max_w_irr=400,
                           min_n_box=1, max_n_box=4, min_s_box=75, max_s_box=450, marg=10),
}
NOMINAL_SIZE = {"256narrow": 256, "256train": 256, "512train": 512, "512train-large": 512}
MIN_SEGMENT_LENGTH = 10
MIN_SEGMENT_WIDTH = 5
MAX_CORNER_RADIUS = 60


def _draw(mask: np.ndarray, paint) -> np.ndarray:
    """``mask`` (0/1) with ``paint(ImageDraw)`` drawn on it in 1s."""
    canvas = Image.fromarray((255 * (mask > 0)).astype(np.uint8))
    paint(ImageDraw.Draw(canvas))
    return np.asarray(canvas) / 255


def gen_segment_mask(mask: np.ndarray, start, end, brush_width: int) -> np.ndarray:
    """``mask`` with a line from ``start`` to ``end`` (x, y) of width ``brush_width`` added."""
    return _draw(mask, lambda draw: draw.line([start, end], fill=255, width=int(brush_width), joint="curve"))


def gen_box_mask(mask: np.ndarray, masked) -> np.ndarray:
    """``mask`` with the box ``(x0, y0, w, h)`` set to 1."""
    x_0, y_0, w, h = masked
    mask[y_0:y_0 + h, x_0:x_0 + w] = 1
    return mask


def gen_round_mask(mask: np.ndarray, masked, radius: int) -> np.ndarray:
    """``mask`` with a rounded box added; as in the original, its corners are (x0, y0) and
    (x0 + w, y0 + w): a square of side w whatever h is."""
    x_0, y_0, w, _ = masked
    return _draw(mask, lambda draw: draw.rounded_rectangle([(x_0, y_0), (x_0 + w, y_0 + w)], radius=radius,
                                                           fill=255))


def _uniform(prng: np.random.RandomState, low: int, high: int) -> int:
    """An int in [low, high) (``low`` when the range is empty, where the original raised)."""
    return int(prng.randint(low, high)) if high > low else int(low)


def gen_large_mask(prng: np.random.RandomState, img_h: int, img_w: int, marg, p_irr, min_n_irr, max_n_irr,
                   max_l_irr, max_w_irr, min_n_box, max_n_box, min_s_box, max_s_box, scale: float = 1.0
                   ) -> np.ndarray:
    """An ``img_h`` x ``img_w`` float mask of 0s and 1s: with probability ``p_irr`` a chain of
    [min_n_irr, max_n_irr) segments, else [min_n_box, max_n_box) boxes, half of them with rounded
    corners. ``scale`` multiplies the fixed pixel constants (shortest segment, thinnest brush,
    largest corner radius) as the mode's ranges were scaled."""
    mask = np.zeros((img_h, img_w))
    if prng.uniform(0, 1) < p_irr:
        for _ in range(_uniform(prng, min_n_irr, max_n_irr)):
            y = _uniform(prng, 0, img_h)
            x = _uniform(prng, 0, img_w)
            angle = _uniform(prng, 0, 360)  # used as radians, as in the original
            length = _uniform(prng, max(1, round(MIN_SEGMENT_LENGTH * scale)), max_l_irr)
            width = _uniform(prng, max(1, round(MIN_SEGMENT_WIDTH * scale)), max_w_irr)
            x_end, y_end = x + length * np.sin(angle), y + length * np.cos(angle)
            mask = gen_segment_mask(mask, start=(x, y), end=(x_end, y_end), brush_width=width)
        return mask
    for _ in range(_uniform(prng, min_n_box, max_n_box)):
        h = _uniform(prng, min_s_box, max_s_box)
        w = _uniform(prng, min_s_box, max_s_box)
        x_0 = _uniform(prng, marg, img_w - marg - w)
        y_0 = _uniform(prng, marg, img_h - marg - h)
        if prng.uniform(0, 1) < 0.5:
            mask = gen_box_mask(mask, masked=(x_0, y_0, w, h))
        else:
            radius = _uniform(prng, 0, max(1, round(MAX_CORNER_RADIUS * scale)))
            mask = gen_round_mask(mask, masked=(x_0, y_0, w, h), radius=radius)
    return mask


def scaled_settings(mode: str, img_h: int, img_w: int) -> Dict[str, object]:
    """The mode's ranges for an image of this size (scaled down below the nominal size)."""
    settings = dict(SETTINGS[mode])
    scale = min(1.0, min(img_h, img_w) / NOMINAL_SIZE[mode])
    if scale < 1.0:
        for key, value in settings.items():
            if key != "p_irr" and value is not None and key not in ("min_n_irr", "max_n_irr", "min_n_box",
                                                                    "max_n_box"):
                settings[key] = max(1, round(value * scale))
    settings["scale"] = scale
    return settings


def make_mask(mode: str, prng: np.random.RandomState, img_h: int, img_w: int) -> np.ndarray:
    """A mask of the named mode (one of :data:`SETTINGS`)."""
    return gen_large_mask(prng, img_h, img_w, **scaled_settings(mode, img_h, img_w))


MASK_MODES = tuple(SETTINGS)
