"""The inputs of ``scripts/evaluate.py``: a folder of images, an ``.npz`` of samples as
``sample_diffusion.py`` writes them (uint8 NHWC under ``arr_0``), or an ``.npz`` of Inception
statistics (``mu``, ``sigma``, as ``--save-stats`` writes and pytorch-fid reads).

Images are read as 8-bit RGB (grey and RGBA converted, as pytorch-fid does) and handed out in
batches of one size; sample arrays are streamed from the file, so 50k samples need not fit in memory.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Union

import numpy as np
from PIL import Image

from ldm.evaluation.fidelity import GaussianStats
from ldm.inference.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SAMPLES_KEY = "arr_0"
STATS_KEYS = ("mu", "sigma")


@dataclass
class ImageFolder:
    """The images directly in a folder, in file-name order."""
    path: Path
    files: List[Path]

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 ``(n, H, W, 3)`` arrays of at most ``batch_size`` images; a batch ends early where
        the image size changes."""
        pending: List[np.ndarray] = []
        for file in self.files:
            with Image.open(file) as image:
                array = np.asarray(image.convert("RGB"))
            if pending and (len(pending) == batch_size or array.shape != pending[0].shape):
                yield np.stack(pending)
                pending = []
            pending.append(array)
        if pending:
            yield np.stack(pending)


@dataclass
class SampleArray:
    """``arr_0`` of an ``.npz``: uint8 ``(N, H, W, 3)``, read a batch at a time."""
    path: Path
    shape: tuple

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        row_bytes = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{SAMPLES_KEY}.npy") as member:
            _read_npy_header(member)
            for start in range(0, self.shape[0], batch_size):
                rows = min(batch_size, self.shape[0] - start)
                data = member.read(rows * row_bytes)
                yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(rows, *self.shape[1:])


ImageSet = Union[ImageFolder, SampleArray]


def _read_npy_header(member) -> tuple:
    """(shape, fortran_order, dtype) of an ``.npy`` stream, leaving it at the first data byte."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    return np.lib.format.read_array_header_2_0(member)


def open_input(path: str) -> Union[ImageSet, GaussianStats]:
    """An image folder, a sample ``.npz`` or a statistics ``.npz``; UsageError naming the path and
    what it should be otherwise."""
    where = Path(path)
    if where.is_dir():
        return _image_folder(where)
    if not where.is_file():
        raise UsageError(f"{path} does not exist: pass an image folder or an .npz of samples or statistics")
    if where.suffix != ".npz" or not zipfile.is_zipfile(where):
        raise UsageError(f"{path} is not an .npz file: pass an image folder or an .npz of samples or statistics")
    with zipfile.ZipFile(where) as archive:
        members = {Path(name).stem for name in archive.namelist()}
    if set(STATS_KEYS) <= members:
        return read_stats(path)
    if SAMPLES_KEY in members:
        return _sample_array(where)
    raise UsageError(f"{path} holds neither samples ({SAMPLES_KEY}) nor statistics (mu, sigma)")


def _image_folder(folder: Path) -> ImageFolder:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return ImageFolder(folder, files)


def _sample_array(path: Path) -> SampleArray:
    with zipfile.ZipFile(path) as archive, archive.open(f"{SAMPLES_KEY}.npy") as member:
        shape, fortran_order, dtype = _read_npy_header(member)
    if dtype != np.uint8 or fortran_order or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise UsageError(f"{path}: {SAMPLES_KEY} must be uint8 (N, H, W, 3) images as sample_diffusion.py "
                         f"writes them, got {dtype} {shape}")
    return SampleArray(path, tuple(shape))


def read_stats(path: str) -> GaussianStats:
    """``mu`` (D,) and ``sigma`` (D, D) of a statistics ``.npz``."""
    with np.load(path, allow_pickle=False) as data:
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UsageError(f"{path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return GaussianStats(mu, sigma)


def save_stats(path: str, stats: GaussianStats) -> None:
    """Write ``mu`` and ``sigma`` to a new ``.npz`` (an existing file is never replaced)."""
    if not path.endswith(".npz"):
        raise UsageError(f"--save-stats {path}: the file name must end in .npz")
    if os.path.exists(path):
        raise UsageError(f"--save-stats {path} exists; choose a new file name (existing files are never replaced)")
    with open(path, "xb") as handle:
        np.savez(handle, mu=stats.mu, sigma=stats.sigma)
