"""The one image I/O helper of the scripts: reading images, masks and depth maps, converting
between PIL and tensors, making grids (no torchvision), and writing numbered PNGs with their
generation parameters, never over an existing file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from ldm.inference.errors import UsageError
from ldm.util.images import make_grid

SAMPLES_DIRNAME = "samples"
SAMPLE_NAME = "{:05}.png"     # samples/<number>.png, as the originals name them
GRID_NAME = "grid-{:04}.png"  # <outdir>/grid-<number>.png
PARAMETERS_KEY = "parameters"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


def open_image(path: str, flag: str) -> Image.Image:
    """Open and fully decode an image file; a missing or unreadable file is a UsageError naming
    the flag it came from."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise UsageError(f"{flag}: file not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise UsageError(f"{flag}: {path} is too large to decode safely ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UsageError(f"{flag}: cannot read {path} as an image ({err})") from None


def read_source(source: ImageSource, flag: str) -> Union[Image.Image, np.ndarray]:
    """An image given as a file path, a PIL image or an array (``[H, W]`` or ``[H, W, C]``,
    uint8 in [0, 255] or float in [0, 1]), as a PIL image or that array."""
    if isinstance(source, (str, os.PathLike)):
        source = open_image(os.fspath(source), flag)
    if isinstance(source, Image.Image):
        return _deep_as_array(source)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[-1] not in (1, 3, 4)):
            raise UsageError(f"{flag}: an image array must be [H, W] or [H, W, 1|3|4], got shape "
                             f"{list(source.shape)}")
        if source.dtype != np.uint8 and not np.issubdtype(source.dtype, np.floating):
            raise UsageError(f"{flag}: an image array must be uint8 or float, got {source.dtype}")
        return source
    raise UsageError(f"{flag}: expected a file path, a PIL image or an array, got {type(source).__name__}")


def _deep_as_array(image: Image.Image) -> Union[Image.Image, np.ndarray]:
    """A 16-bit (``I;16``, ``I``) or float (``F``) single-channel image as a float array in
    [0, 1] at its real depth (PIL's 8-bit conversions would clip it to white); others unchanged."""
    if image.mode.startswith("I"):
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return image


def source_size(image: Union[Image.Image, np.ndarray]) -> Tuple[int, int]:
    """``(width, height)`` of what :func:`read_source` returned."""
    return image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])


def _unit_array(image: Union[Image.Image, np.ndarray], mode: str) -> np.ndarray:
    """Pixels as float32 in [0, 1]: ``[H, W, 3]`` for mode RGB, ``[H, W]`` for mode L."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if mode == "RGB":
        return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else np.broadcast_to(
            array, (*array.shape[:2], 3)).copy()
    return array.mean(axis=-1) if array.ndim == 3 else array


def _resized(image: Union[Image.Image, np.ndarray], size: Tuple[int, int], mode: str) -> Union[Image.Image, np.ndarray]:
    """``image`` at ``size`` (Lanczos, in 8 bits as the originals resize); unchanged when it has that size."""
    if source_size(image) == size:
        return image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.round(_unit_array(image, mode) * 255.0).astype(np.uint8), mode=mode)
    return image.convert(mode).resize(size, resample=Image.LANCZOS)


def size_rounded_down(size: Tuple[int, int], multiple: int, flag: str) -> Tuple[int, int]:
    """``(width, height)`` rounded down to multiples of ``multiple`` (the originals round
    img2img inputs down to 64 so that the UNet's down/up-sampling lines up)."""
    width, height = (side - side % multiple for side in size)
    if width == 0 or height == 0:
        raise UsageError(f"{flag}: the image is {size[0]}x{size[1]}, smaller than the "
                         f"{multiple}x{multiple} pixels this model needs at least")
    return width, height


def image_to_tensor(image: Union[Image.Image, np.ndarray]) -> torch.Tensor:
    """An RGB image as a ``[1, 3, H, W]`` float tensor in [-1, 1]."""
    return torch.from_numpy(_unit_array(image, "RGB")).permute(2, 0, 1)[None] * 2.0 - 1.0


def load_image(source: ImageSource, multiple: int, flag: str = "--init-img") -> torch.Tensor:
    """Read an RGB image, resize it (Lanczos) down to multiples of ``multiple``, as
    ``[1, 3, H, W]`` in [-1, 1]."""
    image = read_source(source, flag)
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    return image_to_tensor(_resized(image, size_rounded_down(source_size(image), multiple, flag), "RGB"))


def load_mask(source: ImageSource, image_size: Tuple[int, int], multiple: int,
              flag: str = "--mask") -> torch.Tensor:
    """Read a mask of the same size as its image (white = repaint), resize it like the image and
    binarise it at 0.5 as the originals do: ``[1, 1, H, W]`` of 0 and 1."""
    mask = read_source(source, flag)
    width, height = source_size(mask)
    if (width, height) != tuple(image_size):
        raise UsageError(f"{flag}: the mask is {width}x{height} but the image is "
                         f"{image_size[0]}x{image_size[1]}; they must be the same size")
    mask = _resized(mask, size_rounded_down((width, height), multiple, flag), "L")
    array = _unit_array(mask, "L")
    return torch.from_numpy((array >= 0.5).astype(np.float32))[None, None]


def load_depth(source: ImageSource, flag: str = "--depth") -> torch.Tensor:
    """Read a depth map (grey, RGB, or 16/32-bit; brighter = nearer, as MiDaS outputs) as
    ``[1, 1, H, W]`` float. Its scale does not matter: it is min/max normalised later."""
    depth = read_source(source, flag)
    if isinstance(depth, np.ndarray):
        array = depth.astype(np.float32)
        array = array.mean(axis=-1) if array.ndim == 3 else array
    else:
        array = np.asarray(depth.convert("L"), dtype=np.float32)
    if array.ndim != 2:
        raise UsageError(f"{flag}: cannot read {source} as a single-channel depth map")
    return torch.from_numpy(array.copy())[None, None]


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


def grid_of_uint8(arrays: np.ndarray, nrow: int) -> np.ndarray:
    """The grid of ``[N, H, W, 3]`` uint8 images, pixel for pixel the one that
    ``to_uint8(make_grid(images))`` gives of the float images they were made from (a grid only
    places pixels, and its padding is 0 either way)."""
    tiles = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2)
    return make_grid(tiles, nrow).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def save_png(array: np.ndarray, path: Path, parameters: Optional[str] = None) -> None:
    """Write ``[H, W, 3]`` (or ``[H, W, 1]``, uint8 or 16-bit grey) as a PNG, with a ``parameters`` text chunk when
    given. The file is written whole under a temporary name beside ``path`` and then linked into
    place, so an interruption or a full disk never leaves a truncated PNG under the name; raises
    FileExistsError rather than replace an existing file."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, parameters)
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format="PNG", pnginfo=info)
            stream.flush()
            os.fsync(stream.fileno())
        place_without_replacing(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def place_without_replacing(temporary: str, path: Path) -> None:
    """Give the finished ``temporary`` file the name ``path`` unless that name is taken."""
    try:
        os.link(temporary, path)  # atomic, and fails with FileExistsError when the name is taken
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(path) from None
        os.rename(temporary, path)


def save_image(image: Image.Image, path: Union[str, os.PathLike]) -> Path:
    """Write a PIL image made by a pipeline as a PNG with its ``parameters`` text (PIL's own
    ``save`` drops it); refuses to replace an existing file."""
    array = np.asarray(image.convert("RGB"))
    save_png(array, Path(path), image.info.get(PARAMETERS_KEY))
    return Path(path)


def read_parameters(path: str) -> Optional[str]:
    """The ``parameters`` text of a PNG, or None."""
    with Image.open(path) as image:
        return image.info.get(PARAMETERS_KEY)


def read_png_pixels(path: Path) -> np.ndarray:
    """The pixels of a PNG that :func:`save_png` wrote, as the uint8 array it was given (``[H, W, 3]``)."""
    with Image.open(path) as image:
        return np.asarray(image)


class OutputWriter:
    """Numbered outputs as the originals name them: ``<outdir>/samples/00000.png`` counting on from
    the number of files already in ``samples/``, and ``<outdir>/grid-0000.png`` counting on from
    the number of entries in ``outdir`` other than ``samples/``. A taken name is skipped, so
    nothing is ever overwritten. Folders are created at the first write, not before."""

    def __init__(self, outdir: Optional[str], skip_save: bool = False, skip_grid: bool = False):
        if not outdir:
            raise UsageError("--outdir needs a folder name")
        self.outdir = Path(outdir)
        self.samples_dir = self.outdir / SAMPLES_DIRNAME
        self.skip_save = skip_save
        self.skip_grid = skip_grid
        self.written: list = []
        check_output_folder(self.outdir, self.samples_dir)
        self._next_sample = _entry_count(self.samples_dir)
        self._next_grid = max(0, _entry_count(self.outdir) - int(self.samples_dir.is_dir()))

    @property
    def samples_written(self) -> int:
        return sum(1 for path in self.written if path.parent == self.samples_dir)

    def save_sample(self, array: np.ndarray, parameters: Optional[str]) -> Optional[Path]:
        if self.skip_save:
            return None
        path, self._next_sample = self._write(self.samples_dir, SAMPLE_NAME, self._next_sample, array, parameters)
        return path

    def save_grid(self, images: torch.Tensor, nrow: int, parameters: Optional[str]) -> Optional[Path]:
        if self.skip_grid or len(images) == 0:
            return None
        return self.save_grid_array(to_uint8(make_grid(images, nrow)[None])[0], parameters)

    def save_grid_array(self, array: np.ndarray, parameters: Optional[str]) -> Path:
        """Write a grid made already (``[H, W, 3]`` uint8) under the next free grid name."""
        path, self._next_grid = self._write(self.outdir, GRID_NAME, self._next_grid, array, parameters)
        return path

    def _write(self, folder: Path, pattern: str, number: int, array: np.ndarray,
               parameters: Optional[str]) -> Tuple[Path, int]:
        """Write the next numbered file; a failure (a full disk, a folder gone read-only) is one
        line that says how many images are safe."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path, number = _write_numbered(folder, pattern, number, array, parameters)
        except OSError as err:
            raise UsageError(f"cannot write in {folder} ({err.strerror or err}); {self.samples_written} image(s) "
                             f"saved in {self.outdir}") from None
        self.written.append(path)
        return path, number


def check_output_folder(*folders: Path) -> None:
    """Fail now, before any work, if the output folders could not be created or written: a path
    that is (or lies under) a file, or a folder in which no file can be created. Probes with a
    temporary file that is removed at once; creates no folder."""
    for folder in folders:
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            where = "is" if existing == folder else f"lies under {existing}, which is"
            raise UsageError(f"--outdir: {folder} {where} a file, not a folder")
    probe = _nearest_existing(folders[-1])
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageError(f"--outdir: cannot write in {probe} ({err.strerror or err})") from None


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


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


DEPTH_PATTERN = "depth-{:05}.png"


def depth_to_uint16(depth: torch.Tensor) -> np.ndarray:
    """A depth map ``[H, W]`` in any range as ``[H, W, 1]`` 16-bit grey, stretched per map to the
    full range as the model stretches it to [-1, 1] (its minimum 0, its maximum 65535; brighter =
    nearer, as MiDaS); a flat map is all 0. ``--depth`` reads it back to the same conditioning."""
    depth = depth.detach().float().cpu()
    low, high = depth.min(), depth.max()
    unit = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
    return np.round(unit.numpy() * 65535.0).astype(np.uint16)[..., None]


class DepthMapWriter:
    """``--save-depth PATH_OR_DIR``: a path ending in ``.png`` takes the one depth map of a run
    and must not exist yet; any other path is a folder that gets ``depth-NNNNN.png`` numbered as
    the samples are (counting on from its entries, skipping taken names). Nothing is overwritten;
    the checks run before any work, folders are created at the first write."""

    def __init__(self, target: str, count: int, flag: str = "--save-depth"):
        if not target:
            raise UsageError(f"{flag} needs a file name (.png) or a folder")
        self.flag = flag
        self.target = Path(target)
        self.is_file = self.target.suffix.lower() == ".png" and not self.target.is_dir()
        self.written: list = []
        if self.is_file:
            if count > 1:
                raise UsageError(f"{flag}: {count} depth maps to write (one per input image); give a folder, "
                                 f"not the file {target}")
            if self.target.exists():
                raise UsageError(f"{flag}: {target} exists; give a new file name or a folder (nothing is "
                                 "overwritten)")
            check_output_folder(self.target.parent)
        else:
            check_output_folder(self.target)
        self._next = 0 if self.is_file else _entry_count(self.target)

    def save(self, depth: torch.Tensor) -> Path:
        """Write one ``[H, W]`` depth map (see :func:`depth_to_uint16`); returns its path."""
        array = depth_to_uint16(depth)
        try:
            if self.is_file:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                save_png(array, self.target)
                path = self.target
            else:
                self.target.mkdir(parents=True, exist_ok=True)
                path, self._next = _write_numbered(self.target, DEPTH_PATTERN, self._next, array, None)
        except FileExistsError:
            raise UsageError(f"{self.flag}: {self.target} was created meanwhile; it is left as it is") from None
        except OSError as err:
            raise UsageError(f"{self.flag}: cannot write in {self.target} ({err.strerror or err})") from None
        self.written.append(path)
        return path


def grid_rows(n_rows: int, n_samples: int) -> int:
    """Images per grid row: ``--n_rows``, or the batch size when 0 (as the originals)."""
    return n_rows if n_rows > 0 else n_samples

