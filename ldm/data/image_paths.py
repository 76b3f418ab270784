"""Image files as the original data modules read them: the data root their relative ``data/...``
paths live under, the file lists that name the images, and taming-transformers' ``ImagePaths``
and ``ConcatDatasetWithIndex`` (resize the shorter side, crop a square, scale to [-1, 1]).

Resizing follows albumentations' ``SmallestMaxSize`` (OpenCV interpolation, here through
:func:`ldm.modules.image_degradation.resampling.resize`, so neither OpenCV nor albumentations is
needed); crops follow its ``CenterCrop`` / ``RandomCrop``.
"""
from __future__ import annotations

import bisect
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from ldm.data.base import DatasetError
from ldm.modules.image_degradation.resampling import INTER_LINEAR, resize
from ldm.util.errors import first_line

DATA_ROOT_ENV = "LDM_DATA_ROOT"
DATA_DOC = "docs/DATA.md"


def data_root() -> str:
    """The folder the original data modules read from: ``$LDM_DATA_ROOT``, else ``data`` relative
    to the working directory (where the originals' ``data/...`` paths point)."""
    return os.path.expanduser(os.environ.get(DATA_ROOT_ENV) or "data")


def missing_data(what: str, layout: str, remedy: str = "") -> DatasetError:
    """The one-line error for data that is not where a data module looks: what is missing, the
    layout expected, and how to point the module at the data."""
    remedy = remedy or "set it to the folder that holds the data"
    return DatasetError(f"{what} not found: expected {layout} ({DATA_ROOT_ENV} is {data_root()!r}: {remedy}; "
                        f"see {DATA_DOC})")


def read_file_list(path: str, what: str, layout: str) -> List[str]:
    """The relative paths a file list names, one per line (blank lines skipped). A missing or
    empty list is a DatasetError naming ``layout``."""
    if not os.path.isfile(path):
        raise missing_data(f"{what} file list {path}", layout)
    with open(path, encoding="utf-8") as handle:
        paths = [line.strip() for line in handle if line.strip()]
    if not paths:
        raise DatasetError(f"{what} file list {path} names no images (expected {layout}; see {DATA_DOC})")
    return paths


def check_first_listed(paths: Sequence[str], what: str, list_path: str, root: str) -> None:
    """A list whose first file is missing almost always points at the wrong root: say so now,
    not in the middle of training."""
    if paths and not os.path.isfile(paths[0]):
        raise missing_data(f"{what} image {paths[0]} (the first one {list_path} names)",
                           f"the files it lists under {root}/")


def read_rgb(path: str) -> np.ndarray:
    """An image file as an HxWx3 uint8 array (converted to RGB, as the originals do); a ``.npy``
    file (CelebA-HQ's layout: 1x3xHxW, 3xHxW or HxWx3 uint8) is read without pickle."""
    try:
        if path.endswith(".npy"):
            return _rgb_from_array(np.load(path, allow_pickle=False), path)
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path} ({first_line(err)}): remove or replace it") from None


def _rgb_from_array(array: np.ndarray, path: str) -> np.ndarray:
    array = np.squeeze(array, axis=0) if array.ndim == 4 and array.shape[0] == 1 else array
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3:
        array = np.transpose(array, (1, 2, 0))
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise DatasetError(f"{path} holds a {array.dtype} array of shape {array.shape}; expected uint8 "
                           "1x3xHxW, 3xHxW or HxWx3")
    return np.ascontiguousarray(array)


def smallest_max_size(image: np.ndarray, size: int, interpolation: int = INTER_LINEAR) -> np.ndarray:
    """Resize so that the shorter side is ``size`` (albumentations' ``SmallestMaxSize``: sides
    rounded half to even, OpenCV ``interpolation``)."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    if scale == 1.0:
        return image
    new_height, new_width = round(height * scale), round(width * scale)
    return resize(image, (new_width, new_height), interpolation)


def crop(image: np.ndarray, height: int, width: int, random_crop: bool) -> np.ndarray:
    """A ``height`` x ``width`` window: centred (albumentations' ``CenterCrop``) or at a uniformly
    random offset (``RandomCrop``)."""
    full_height, full_width = image.shape[:2]
    if height > full_height or width > full_width:
        raise DatasetError(f"cannot crop {height}x{width} from an image of {full_height}x{full_width}")
    if random_crop:
        top = np.random.randint(0, full_height - height + 1)
        left = np.random.randint(0, full_width - width + 1)
    else:
        top, left = (full_height - height) // 2, (full_width - width) // 2
    return image[top:top + height, left:left + width]


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], as every original data module scales."""
    return (image / 127.5 - 1.0).astype(np.float32)


class ImagePaths(Dataset):
    """Examples ``{"image", "file_path_", <labels>}`` for a list of image files: the shorter side
    resized to ``size`` and a ``size`` x ``size`` square cropped (centre or random), as
    taming-transformers' ``ImagePaths``. ``size`` None or 0 keeps the image as it is.
    ``load_images=False`` (ours) leaves ``image`` out: examples carry only the file path and
    labels, for datasets that read and crop the file themselves (super-resolution)."""

    def __init__(self, paths: Sequence[str], size: Optional[int] = None, random_crop: bool = False,
                 labels: Optional[Dict[str, Sequence]] = None, load_images: bool = True):
        self.size = size
        self.random_crop = random_crop
        self.load_images = load_images
        self.labels = dict(labels or {})
        self.labels["file_path_"] = list(paths)
        self._length = len(paths)

    def __len__(self) -> int:
        return self._length

    def preprocess_image(self, image_path: str) -> np.ndarray:
        image = read_rgb(image_path)
        if self.size:
            image = crop(smallest_max_size(image, self.size), self.size, self.size, self.random_crop)
        return to_unit_range(image)

    def __getitem__(self, i: int) -> Dict[str, object]:
        example = {k: v[i] for k, v in self.labels.items()}
        if self.load_images:
            example["image"] = self.preprocess_image(self.labels["file_path_"][i])
        return example


class ConcatDatasetWithIndex(ConcatDataset):
    """Datasets one after the other; an item is ``(example, index of the dataset it came from)``."""

    def __getitem__(self, idx: int):
        if idx < 0:
            if -idx > len(self):
                raise IndexError(f"index {idx} out of range for {len(self)} examples")
            idx = len(self) + idx
        dataset_idx = bisect.bisect_right(self.cumulative_sizes, idx)
        sample_idx = idx - (self.cumulative_sizes[dataset_idx - 1] if dataset_idx > 0 else 0)
        return self.datasets[dataset_idx][sample_idx], dataset_idx
