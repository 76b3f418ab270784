"""LSUN churches, bedrooms and cats from local files, under latent-diffusion's class names and
parameters. As the originals, a text file lists the images relative to the category's folder::

    <data root>/lsun/church_outdoor_train.txt   church_outdoor_val.txt    -> images in lsun/churches/
    <data root>/lsun/bedrooms_train.txt         bedrooms_val.txt          -> images in lsun/bedrooms/
    <data root>/lsun/cat_train.txt              cat_val.txt               -> images in lsun/cats/

``<data root>`` is ``$LDM_DATA_ROOT``, else ``data`` (the originals' ``data/lsun/...``). Examples are
``{"image", "relative_file_path_", "file_path_"}``: the centre square of the image (score-sde's
preprocessing) resized to ``size`` and flipped left-right with probability ``flip_p``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import DatasetError
from ldm.data.image_paths import check_first_listed, data_root, read_file_list, read_rgb, to_unit_range

INTERPOLATIONS = {"linear": Image.Resampling.BILINEAR, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class LSUNBase(Dataset):
    """The images a file list ``txt_file`` names, relative to ``data_root``."""

    def __init__(self, txt_file: str, data_root: str, size: Optional[int] = None, interpolation: str = "bicubic",
                 flip_p: float = 0.5):
        if interpolation not in INTERPOLATIONS:
            raise DatasetError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        if not 0.0 <= flip_p <= 1.0:
            raise DatasetError(f"flip_p must be in [0, 1], got {flip_p}")
        self.data_paths = txt_file
        self.data_root = data_root
        layout = f"a text file of image paths relative to {data_root}/, one per line"
        self.image_paths = read_file_list(txt_file, "LSUN", layout)
        self._length = len(self.image_paths)
        self.labels = {"relative_file_path_": list(self.image_paths),
                       "file_path_": [os.path.join(data_root, p) for p in self.image_paths]}
        check_first_listed(self.labels["file_path_"], "LSUN", txt_file, data_root)
        self.size = size
        self.interpolation = INTERPOLATIONS[interpolation]
        self.flip_p = flip_p

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> Dict[str, object]:
        example = {k: v[i] for k, v in self.labels.items()}
        img = read_rgb(example["file_path_"])
        h, w = img.shape[:2]
        side = min(h, w)
        image = Image.fromarray(img[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2])
        if self.size is not None:
            image = image.resize((self.size, self.size), resample=self.interpolation)
        if np.random.rand() < self.flip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        example["image"] = to_unit_range(np.asarray(image, dtype=np.uint8))
        return example


class _LSUNCategory(LSUNBase):
    """One category's split: its file list and image folder under ``<data root>/lsun``."""

    LIST = FOLDER = ""
    FLIP_P = 0.5

    def __init__(self, size: Optional[int] = None, interpolation: str = "bicubic", flip_p: Optional[float] = None):
        root = os.path.join(data_root(), "lsun")
        super().__init__(txt_file=os.path.join(root, self.LIST), data_root=os.path.join(root, self.FOLDER), size=size,
                         interpolation=interpolation, flip_p=self.FLIP_P if flip_p is None else flip_p)


class LSUNChurchesTrain(_LSUNCategory):
    LIST, FOLDER = "church_outdoor_train.txt", "churches"


class LSUNChurchesValidation(_LSUNCategory):
    LIST, FOLDER, FLIP_P = "church_outdoor_val.txt", "churches", 0.0


class LSUNBedroomsTrain(_LSUNCategory):
    LIST, FOLDER = "bedrooms_train.txt", "bedrooms"


class LSUNBedroomsValidation(_LSUNCategory):
    LIST, FOLDER, FLIP_P = "bedrooms_val.txt", "bedrooms", 0.0


class LSUNCatsTrain(_LSUNCategory):
    LIST, FOLDER = "cat_train.txt", "cats"


class LSUNCatsValidation(_LSUNCategory):
    LIST, FOLDER, FLIP_P = "cat_val.txt", "cats", 0.0
