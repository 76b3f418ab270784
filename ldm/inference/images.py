"""The one image I/O helper of the scripts: reading images, masks and depth maps, converting
between PIL and tensors, making grids (no torchvision), and writing numbered PNGs with their
generation parameters, never over an existing file."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from ldm.inference.errors import UsageError

SAMPLES_DIRNAME = "samples"
PARAMETERS_KEY = "parameters"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def open_image(path: str, flag: str) -> Image.Image:
    """Open and fully decode an image file; a missing or unreadable file is a UsageError naming
    the flag it came from."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise UsageError(f"{flag}: file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UsageError(f"{flag}: cannot read {path} as an image ({err})") from None


def size_rounded_down(size: Tuple[int, int], multiple: int, flag: str) -> Tuple[int, int]:
    """``(width, height)`` rounded down to multiples of ``multiple`` (the originals round
    img2img inputs down to 64 so that the UNet's down/up-sampling lines up)."""
    width, height = (side - side % multiple for side in size)
    if width == 0 or height == 0:
        raise UsageError(f"{flag}: the image is {size[0]}x{size[1]}, smaller than the "
                         f"{multiple}x{multiple} pixels this model needs at least")
    return width, height


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a ``[1, 3, H, W]`` float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2.0 - 1.0


def load_image(path: str, multiple: int, flag: str = "--init-img") -> torch.Tensor:
    """Read an RGB image, resize it (Lanczos) down to multiples of ``multiple``, as
    ``[1, 3, H, W]`` in [-1, 1]."""
    image = open_image(path, flag).convert("RGB")
    size = size_rounded_down(image.size, multiple, flag)
    if size != image.size:
        image = image.resize(size, resample=Image.LANCZOS)
    return image_to_tensor(image)


def load_mask(path: str, image_size: Tuple[int, int], multiple: int,
              flag: str = "--mask") -> torch.Tensor:
    """Read a mask of the same size as its image (white = repaint), resize it like the image and
    binarise it at 0.5 as the originals do: ``[1, 1, H, W]`` of 0 and 1."""
    mask = open_image(path, flag)
    if mask.size != tuple(image_size):
        raise UsageError(f"{flag}: the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                         f"{image_size[0]}x{image_size[1]}; they must be the same size")
    mask = mask.convert("L")
    size = size_rounded_down(mask.size, multiple, flag)
    if size != mask.size:
        mask = mask.resize(size, resample=Image.LANCZOS)
    array = np.asarray(mask, dtype=np.float32) / 255.0
    return torch.from_numpy((array >= 0.5).astype(np.float32))[None, None]


def load_depth(path: str, flag: str = "--depth") -> torch.Tensor:
    """Read a depth map (grey, RGB, or 16/32-bit; brighter = nearer, as MiDaS outputs) as
    ``[1, 1, H, W]`` float. Its scale does not matter: it is min/max normalised later."""
    depth = open_image(path, flag)
    if depth.mode.startswith(("I", "F")):
        array = np.asarray(depth, dtype=np.float32)
    else:
        array = np.asarray(depth.convert("L"), dtype=np.float32)
    if array.ndim != 2:
        raise UsageError(f"{flag}: cannot read {path} as a single-channel depth map")
    return torch.from_numpy(array.copy())[None, None]


def image_size_of(path: str, flag: str) -> Tuple[int, int]:
    """``(width, height)`` of an image file."""
    return open_image(path, flag).size


# ---------------------------------------------------------------------------------------------
# Converting and grids
# ---------------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [0, 1] to ``[B, H, W, 3]`` uint8 the way the originals convert
    (``255 * x`` then truncation, not rounding)."""
    array = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return (255.0 * array).astype(np.uint8)


def pixels_for_output(image: torch.Tensor) -> torch.Tensor:
    """An input image in [-1, 1] (from :func:`image_to_tensor`) as [0, 1] values that
    :func:`to_uint8` turns back into exactly the input's 8-bit pixels (the centre of each pixel's
    interval, so truncation cannot lose one), for pasting known pixels into outputs."""
    levels = torch.round((image.float() + 1.0) / 2.0 * 255.0)
    return (levels + 0.5) / 255.0


def make_grid(images: torch.Tensor, nrow: int = 4, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile ``[N, C, H, W]`` into one ``[C, H', W']`` image, ``nrow`` images per row, with
    ``padding`` pixels of ``pad_value`` around each (torchvision's ``make_grid`` layout, written
    here because torchvision cannot be used). Single-channel batches become 3-channel."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((channels, rows * cell_h + padding, columns * cell_w + padding), pad_value)
    for index in range(count):
        top = (index // columns) * cell_h + padding
        left = (index % columns) * cell_w + padding
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def save_png(array: np.ndarray, path: Path, parameters: Optional[str] = None) -> None:
    """Write ``[H, W, 3]`` (or ``[H, W, 1]``) uint8 as a PNG, with a ``parameters`` text chunk when
    given; raises FileExistsError rather than replace an existing file (exclusive create)."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, parameters)
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    with open(path, "xb") as handle:
        image.save(handle, format="PNG", pnginfo=info)


def read_parameters(path: str) -> Optional[str]:
    """The ``parameters`` text of a PNG, or None."""
    with Image.open(path) as image:
        return image.info.get(PARAMETERS_KEY)


class OutputWriter:
    """Numbered outputs as the originals name them: ``<outdir>/samples/00000.png`` counting on from
    the number of files already in ``samples/``, and ``<outdir>/grid-0000.png`` counting on from
    the number of entries in ``outdir`` other than ``samples/``. A taken name is skipped, so
    nothing is ever overwritten. Folders are created at the first write, not before."""

    def __init__(self, outdir: str, skip_save: bool = False, skip_grid: bool = False):
        self.outdir = Path(outdir)
        self.samples_dir = self.outdir / SAMPLES_DIRNAME
        self.skip_save = skip_save
        self.skip_grid = skip_grid
        self.written: list = []
        self._next_sample = _entry_count(self.samples_dir)
        self._next_grid = max(0, _entry_count(self.outdir) - int(self.samples_dir.is_dir()))
        for folder in (self.outdir, self.samples_dir):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--outdir: {folder} exists and is not a folder")

    def save_sample(self, array: np.ndarray, parameters: Optional[str]) -> Optional[Path]:
        if self.skip_save:
            return None
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path, self._next_sample = _write_numbered(self.samples_dir, "{:05}.png", self._next_sample,
                                                  array, parameters)
        self.written.append(path)
        return path

    def save_grid(self, images: torch.Tensor, nrow: int, parameters: Optional[str]) -> Optional[Path]:
        if self.skip_grid or len(images) == 0:
            return None
        self.outdir.mkdir(parents=True, exist_ok=True)
        array = to_uint8(make_grid(images, nrow)[None])[0]
        path, self._next_grid = _write_numbered(self.outdir, "grid-{:04}.png", self._next_grid,
                                                array, parameters)
        self.written.append(path)
        return path


def _entry_count(folder: Path) -> int:
    return len(os.listdir(folder)) if folder.is_dir() else 0


def _write_numbered(folder: Path, pattern: str, number: int, array: np.ndarray,
                    parameters: Optional[str]) -> Tuple[Path, int]:
    """Write at the first free ``pattern.format(n)`` with ``n >= number``; return the path and
    the next number to try."""
    while True:
        path = folder / pattern.format(number)
        number += 1
        try:
            save_png(array, path, parameters)
            return path, number
        except FileExistsError:
            continue


def grid_rows(n_rows: int, n_samples: int) -> int:
    """Images per grid row: ``--n_rows``, or the batch size when 0 (as the originals)."""
    return n_rows if n_rows > 0 else n_samples

