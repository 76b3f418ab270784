"""A folder of images with captions, for training autoencoders and text-to-image models.

Captions come from, in this order: an explicit ``captions`` file (.csv with a header, or .jsonl),
a ``metadata.jsonl`` / ``metadata.csv`` in the folder (the Hugging Face imagefolder layout), or a
sidecar ``<image stem>.txt`` next to each image (missing ones give ``default_caption``).

Each example is a dict with the keys the original configs read: ``image`` and ``jpg`` (the same
HWC float32 array in [-1, 1]), ``txt`` and ``caption`` (the same string), and ``file_path_``.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ldm.data.base import DatasetError
from ldm.util.errors import first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IMAGE_COLUMNS = ("file_name", "filename", "file", "image", "image_path", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "txt", "prompt")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                   "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
                   "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}


def _list_images(root: str, recursive: bool) -> List[str]:
    """Image files under ``root`` (relative paths, sorted for a stable order)."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if recursive else []
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def _pick_column(columns: Sequence[str], candidates: Sequence[str], what: str, source: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise DatasetError(f"{source} has no {what} column: expected one of {', '.join(candidates)}, "
                       f"found {', '.join(columns) or 'none'}")


def _read_records(path: str) -> List[dict]:
    if path.endswith(".jsonl"):
        records = []
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DatasetError(f"{path}:{line_no} is not valid JSON ({err.msg})") from None
        return records
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    raise DatasetError(f"captions file {path} must be .csv (with a header) or .jsonl")


def read_caption_table(path: str) -> List[Tuple[str, str]]:
    """``(image path, caption)`` pairs from a .csv (with header) or .jsonl captions file."""
    records = _read_records(path)
    if not records:
        raise DatasetError(f"captions file {path} lists no images")
    columns = list(records[0].keys())
    image_col = _pick_column(columns, IMAGE_COLUMNS, "image file", path)
    caption_col = _pick_column(columns, CAPTION_COLUMNS, "caption", path)
    return [(str(r[image_col]), str(r.get(caption_col) or "")) for r in records]


def center_or_random_crop(image: Image.Image, size: int, random_crop: bool) -> Image.Image:
    """A ``size`` x ``size`` window: centred, or at a uniformly random offset."""
    width, height = image.size
    if random_crop:
        left = np.random.randint(0, width - size + 1)
        top = np.random.randint(0, height - size + 1)
    else:
        left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_shorter_side(image: Image.Image, size: int, resample) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image if new_size == image.size else image.resize(new_size, resample=resample)


class CaptionedImageFolder(Dataset):
    """Images under ``root`` with their captions, resized so the shorter side is ``size`` and
    cropped to a square (centre, or random with ``random_crop``), flipped with probability
    ``flip_p``. ``size=None`` keeps the images as they are (they must then share one size)."""

    def __init__(self, root: str, size: Optional[int] = 256, captions: Optional[str] = None,
                 random_crop: bool = False, flip_p: float = 0.0, interpolation: str = "bicubic",
                 default_caption: str = "", recursive: bool = True):
        super().__init__()
        self.root = os.path.expanduser(str(root))
        if not os.path.isdir(self.root):
            raise DatasetError(f"image folder not found: {self.root}")
        if interpolation not in _INTERPOLATIONS:
            raise DatasetError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
        if not 0.0 <= flip_p <= 1.0:
            raise DatasetError(f"flip_p must be in [0, 1], got {flip_p}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise DatasetError(f"size must be a whole number of pixels >= 1 (or null), got {size!r}")
        self.size = size
        self.random_crop = random_crop
        self.flip_p = flip_p
        self.resample = _INTERPOLATIONS[interpolation]
        self.items = self._collect(captions, default_caption, recursive)

    def _collect(self, captions: Optional[str], default_caption: str, recursive: bool) -> List[Tuple[str, str]]:
        table = self._captions_file(captions)
        if table is not None:
            items = read_caption_table(table)
            missing = [p for p, _ in items if not os.path.isfile(os.path.join(self.root, p))]
            if missing:
                raise DatasetError(f"{table} lists {len(missing)} images missing from {self.root} (e.g. {missing[0]})")
            return items
        images = _list_images(self.root, recursive)
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.root}")
        return [(p, self._sidecar_caption(p, default_caption)) for p in images]

    def _captions_file(self, captions: Optional[str]) -> Optional[str]:
        if captions is not None:
            path = captions if os.path.isabs(captions) else os.path.join(self.root, captions)
            if not os.path.isfile(path):
                raise DatasetError(f"captions file not found: {path}")
            return path
        for name in METADATA_FILES:
            if os.path.isfile(os.path.join(self.root, name)):
                return os.path.join(self.root, name)
        return None

    def _sidecar_caption(self, relpath: str, default_caption: str) -> str:
        sidecar = os.path.splitext(os.path.join(self.root, relpath))[0] + ".txt"
        if not os.path.isfile(sidecar):
            return default_caption
        with open(sidecar, encoding="utf-8") as handle:
            return handle.read().strip()

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, relpath: str) -> np.ndarray:
        """The image as HWC float32 in [-1, 1] after resizing, cropping and flipping. A file that
        is not a readable image is a DatasetError naming it."""
        path = os.path.join(self.root, relpath)
        try:
            with Image.open(path) as raw:
                image = ImageOps.exif_transpose(raw).convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DatasetError(f"cannot read image {path} ({first_line(err)}): remove or replace it") from None
        if self.size is not None:
            image = resize_shorter_side(image, self.size, self.resample)
            image = center_or_random_crop(image, self.size, self.random_crop)
        if self.flip_p > 0 and np.random.rand() < self.flip_p:
            image = ImageOps.mirror(image)
        return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).astype(np.float32)

    def __getitem__(self, index: int) -> Dict[str, object]:
        relpath, caption = self.items[index]
        image = self.load_image(relpath)
        return {"image": image, "jpg": image, "txt": caption, "caption": caption, "file_path_": relpath}
