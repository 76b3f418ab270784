"""A simple, documented detector for images of the shapes world (:mod:`ldm.data.shapes`): it
finds the coloured objects and reports each one's colour, shape and centroid.

1. Foreground: pixels with HSV saturation > ``SATURATION_MIN`` and value > ``VALUE_MIN``
   (backgrounds have saturation <= 0.12, objects ~0.8-1).
2. Colour: each foreground pixel takes the palette colour of nearest hue (circular distance).
3. Objects: per colour, 8-connected components of at least ``min_area`` pixels.
4. Shape, from two scale-free features of the component -- ``fill`` = area / bounding-box area
   and ``solidity`` = area / convex-hull area (hull of the pixel corners):
   solidity < ``STAR_SOLIDITY`` -> star (ideal 0.62); else fill > ``SQUARE_FILL`` -> square
   (ideal 1.0); fill > ``CIRCLE_FILL`` -> circle (pi/4 = 0.785); else triangle (ideal 0.5).
5. Position: the component's centroid.

``docs/SHAPES.md`` reports its accuracy on ground-truth renders (``scripts/evaluate_shapes.py
--detector-only``).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ldm.data.shapes import COLOURS

SATURATION_MIN = 0.35
VALUE_MIN = 0.2
STAR_SOLIDITY = 0.8
SQUARE_FILL = 0.88
CIRCLE_FILL = 0.65
MIN_AREA_FRACTION = 12 / 4096   # 12 pixels of a 64 x 64 image
PALETTE_HUES = {name: 360.0 * colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0] for name, rgb in COLOURS.items()}


@dataclass(frozen=True)
class DetectedObject:
    """A found object: palette colour, shape, centroid (x, y) in pixels, area in pixels, and the
    shape features it was classified from."""
    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    fill: float
    solidity: float


def as_unit_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) image as float in [0, 1]: uint8 in [0, 255], or float in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def hsv(image: np.ndarray):
    """Hue (degrees), saturation and value of an (H, W, 3) image in [0, 1]."""
    maximum, minimum = image.max(axis=-1), image.min(axis=-1)
    chroma = maximum - minimum
    saturation = np.where(maximum > 0, chroma / np.maximum(maximum, 1e-6), 0.0)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.select([maximum == r, maximum == g], [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
                    (r - g) / safe + 4.0)
    return 60.0 * hue, saturation, maximum


def nearest_palette_colour(hue: np.ndarray) -> np.ndarray:
    """Index into ``COLOURS`` of the palette hue nearest to each hue (circular distance)."""
    centres = np.array(list(PALETTE_HUES.values()))
    distance = np.abs(hue[..., None] - centres)
    return np.argmin(np.minimum(distance, 360.0 - distance), axis=-1)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0 = background, 1.. = components), by
    iterated minimum-label propagation."""
    height, width = mask.shape
    big = height * width + 1
    labels = np.where(mask, np.arange(1, height * width + 1).reshape(height, width), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = [padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        updated = np.where(mask, np.minimum.reduce(neighbours), big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    _, dense = np.unique(np.where(mask, labels, 0), return_inverse=True)
    return dense.reshape(height, width)


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain, then the shoelace formula)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return 0.0

    def half(sequence):
        chain = []
        for p in sequence:
            while len(chain) >= 2 and np.cross(chain[-1] - chain[-2], p - chain[-2]) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = np.array(half(pts) + half(pts[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def shape_features(component: np.ndarray):
    """(fill, solidity) of a boolean component mask."""
    ys, xs = np.nonzero(component)
    area = float(len(xs))
    box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    hull = convex_hull_area(corners.astype(np.float64))
    return area / box, (area / hull if hull > 0 else 0.0)


def classify_shape(fill: float, solidity: float) -> str:
    if solidity < STAR_SOLIDITY:
        return "star"
    if fill > SQUARE_FILL:
        return "square"
    if fill > CIRCLE_FILL:
        return "circle"
    return "triangle"


def detect_objects(image: np.ndarray, min_area: Optional[int] = None) -> List[DetectedObject]:
    """All objects in an (H, W, 3) RGB image (uint8, or float in [0, 1]), largest first."""
    return [obj for obj, _ in detect_object_masks(image, min_area)]


def detect_object_masks(image: np.ndarray,
                        min_area: Optional[int] = None) -> List[Tuple[DetectedObject, np.ndarray]]:
    """What :func:`detect_objects` finds, each with its boolean (H, W) pixel mask, largest first:
    for measures that need where an object is, not only its centroid."""
    rgb = as_unit_rgb(image)
    if min_area is None:
        min_area = max(4, int(round(MIN_AREA_FRACTION * rgb.shape[0] * rgb.shape[1])))
    hue, saturation, value = hsv(rgb)
    foreground = (saturation > SATURATION_MIN) & (value > VALUE_MIN)
    colour_index = nearest_palette_colour(hue)
    found = []
    for index, colour in enumerate(COLOURS):
        labels = connected_components(foreground & (colour_index == index))
        for label in range(1, labels.max() + 1):
            component = labels == label
            area = int(component.sum())
            if area < min_area:
                continue
            fill, solidity = shape_features(component)
            ys, xs = np.nonzero(component)
            found.append((DetectedObject(colour, classify_shape(fill, solidity), float(xs.mean()),
                                         float(ys.mean()), area, float(fill), float(solidity)), component))
    return sorted(found, key=lambda pair: -pair[0].area)


def largest_of_colour(objects: List[DetectedObject], colour: str) -> Optional[DetectedObject]:
    """The largest detected object of ``colour`` (objects come largest first), or None."""
    return next((o for o in objects if o.colour == colour), None)


def objects_by_colour(objects: List[DetectedObject]) -> Dict[str, DetectedObject]:
    """The largest object of each colour present."""
    out: Dict[str, DetectedObject] = {}
    for obj in objects:
        out.setdefault(obj.colour, obj)
    return out
