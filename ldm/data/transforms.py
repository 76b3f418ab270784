"""Stand-ins for the torchvision transforms the original configs name (``torchvision.transforms.Resize``,
``RandomCrop``, ``CenterCrop``, mapped here by ``ldm.util.config.ORIGINAL_TARGET_ALIASES``), for
PIL images, with torchvision's parameters and sizes, so that torchvision is never imported.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from PIL import Image

from ldm.data.base import DatasetError

# torchvision's integer interpolation codes (Pillow's filter numbers) and its mode names.
INTERPOLATION_CODES = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
                       3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}
INTERPOLATION_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}

Size = Union[int, Sequence[int]]


def _pair(size: Size, what: str) -> Tuple[int, int]:
    """``size`` as (height, width): an int is a square."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise DatasetError(f"{what} size must be a positive int or [height, width], got {size!r}")
    return pair


def _resample(interpolation) -> Image.Resampling:
    code = INTERPOLATION_NAMES.get(str(interpolation).lower().rsplit(".", 1)[-1], interpolation)
    if code not in INTERPOLATION_CODES:
        raise DatasetError(f"interpolation must be one of {sorted(INTERPOLATION_CODES)} or "
                           f"{', '.join(INTERPOLATION_NAMES)}, got {interpolation!r}")
    return INTERPOLATION_CODES[code]


def _check_fits(image: Image.Image, height: int, width: int, what: str) -> None:
    if height > image.height or width > image.width:
        raise DatasetError(f"{what} of {height}x{width} does not fit a {image.height}x{image.width} image")


class Resize:
    """``size`` int: the shorter side becomes ``size``, the longer ``int(size * long / short)``;
    ``[height, width]``: exactly that size. ``interpolation`` as torchvision's (3 = bicubic)."""

    def __init__(self, size: Size, interpolation=2):
        pair = _pair(size, "Resize")
        self.size = size if isinstance(size, int) else pair
        self.resample = _resample(interpolation)

    def output_size(self, width: int, height: int) -> Tuple[int, int]:
        """(width, height) of the resized image."""
        if not isinstance(self.size, int):
            return self.size[1], self.size[0]
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Image.Image) -> Image.Image:
        size = self.output_size(*image.size)
        return image if size == image.size else image.resize(size, resample=self.resample)


class RandomCrop:
    """A ``size`` window at a uniformly random position (torch's generator, as torchvision)."""

    def __init__(self, size: Size):
        self.height, self.width = _pair(size, "RandomCrop")

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_fits(image, self.height, self.width, "RandomCrop")
        top = int(torch.randint(0, image.height - self.height + 1, size=(1,)))
        left = int(torch.randint(0, image.width - self.width + 1, size=(1,)))
        return image.crop((left, top, left + self.width, top + self.height))


class CenterCrop:
    """The centre ``size`` window (offsets rounded as torchvision rounds them)."""

    def __init__(self, size: Size):
        self.height, self.width = _pair(size, "CenterCrop")

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_fits(image, self.height, self.width, "CenterCrop")
        top = int(round((image.height - self.height) / 2.0))
        left = int(round((image.width - self.width) / 2.0))
        return image.crop((left, top, left + self.width, top + self.height))
