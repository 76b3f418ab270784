"""Image helpers of the original ``utils_image.py`` (from Kai Zhang's KAIR) that the BSR degradations and
super-resolution data use: conversions between uint8 / float numpy images and tensors, crops, flips and
rotations, YCbCr, PSNR / SSIM, MATLAB's bicubic ``imresize``, and image files (through Pillow; images are RGB).

Left out on purpose: the matplotlib viewers (``imshow``, ``surf``), the BGR-reading ``read_img`` and the
dataset-splitting tools. Unlike the originals, the colour conversions never modify their input.
"""
from __future__ import annotations

import math
import os
import random
from datetime import datetime
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ldm.modules.image_degradation.filters import convolve, gaussian_kernel_1d
from ldm.modules.image_degradation.resampling import calculate_weights_indices, cubic, imresize, imresize_np

__all__ = [
    "IMG_EXTENSIONS", "is_image_file", "get_timestamp", "get_image_paths", "mkdir", "mkdirs", "imread_uint",
    "imsave", "imwrite", "uint2single", "single2uint", "uint162single", "single2uint16", "uint2tensor4",
    "uint2tensor3", "tensor2uint", "single2tensor3", "single2tensor4", "tensor2single", "tensor2single3",
    "single2tensor5", "single32tensor5", "single42tensor4", "tensor2img", "augment_img", "augment_img_tensor4",
    "augment_img_tensor", "augment_img_np3", "augment_imgs", "modcrop", "shave", "rgb2ycbcr", "ycbcr2rgb",
    "bgr2ycbcr", "calculate_psnr", "calculate_ssim", "ssim", "cubic", "calculate_weights_indices", "imresize",
    "imresize_np",
]

IMG_EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".ppm", ".PPM", ".bmp", ".BMP", ".tif"]


# ---------------------------------------------------------------------------------------------- files
def is_image_file(filename: str) -> bool:
    return any(filename.endswith(extension) for extension in IMG_EXTENSIONS)


def get_timestamp() -> str:
    return datetime.now().strftime("%y%m%d-%H%M%S")


def get_image_paths(dataroot: Optional[str]) -> Optional[List[str]]:
    """Sorted paths of the image files under ``dataroot`` (recursively); None for None."""
    if dataroot is None:
        return None
    if not os.path.isdir(dataroot):
        raise FileNotFoundError(f"{dataroot} is not a directory")
    paths = [os.path.join(dirpath, name) for dirpath, _, names in sorted(os.walk(dataroot))
             for name in sorted(names) if is_image_file(name)]
    if not paths:
        raise FileNotFoundError(f"{dataroot} holds no image file ({', '.join(IMG_EXTENSIONS)})")
    return sorted(paths)


def mkdir(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def mkdirs(paths) -> None:
    for path in [paths] if isinstance(paths, str) else paths:
        mkdir(path)


def imread_uint(path: str, n_channels: int = 3) -> np.ndarray:
    """Read an image as uint8 HxWx3 (RGB; grey images repeated) or HxWx1 (grey)."""
    with Image.open(path) as image:
        if n_channels == 1:
            return np.asarray(image.convert("L"))[:, :, None]
        if n_channels == 3:
            return np.asarray(image.convert("RGB"))
    raise ValueError(f"n_channels must be 1 or 3, got {n_channels}")


def imsave(img: np.ndarray, img_path: str) -> None:
    """Write a uint8 RGB (HxWx3) or grey (HxW / HxWx1) image; the format follows the file extension."""
    Image.fromarray(np.squeeze(img)).save(img_path)


imwrite = imsave


# ------------------------------------------------------------------------------------- conversions
def uint2single(img: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return np.float32(img / 255.0)


def single2uint(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 [0, 255], clipped and rounded."""
    return np.uint8((img.clip(0, 1) * 255.0).round())


def uint162single(img: np.ndarray) -> np.ndarray:
    return np.float32(img / 65535.0)


def single2uint16(img: np.ndarray) -> np.ndarray:
    return np.uint16((img.clip(0, 1) * 65535.0).round())


def uint2tensor3(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC (or HxW) -> float CxHxW tensor in [0, 1]."""
    if img.ndim == 2:
        img = np.expand_dims(img, axis=2)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)


def uint2tensor4(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC (or HxW) -> float 1xCxHxW tensor in [0, 1]."""
    return uint2tensor3(img).unsqueeze(0)


def tensor2uint(img: torch.Tensor) -> np.ndarray:
    """A 2-, 3- or 4-D tensor in [0, 1] (batch of one) -> uint8 HxW(xC)."""
    img = img.detach().squeeze().float().clamp(0, 1).cpu().numpy()
    if img.ndim == 3:
        img = np.transpose(img, (1, 2, 0))
    return np.uint8((img * 255.0).round())


def single2tensor3(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()


def single2tensor4(img: np.ndarray) -> torch.Tensor:
    return single2tensor3(img).unsqueeze(0)


def tensor2single(img: torch.Tensor) -> np.ndarray:
    img = img.detach().squeeze().float().cpu().numpy()
    return np.transpose(img, (1, 2, 0)) if img.ndim == 3 else img


def tensor2single3(img: torch.Tensor) -> np.ndarray:
    img = tensor2single(img)
    return np.expand_dims(img, axis=2) if img.ndim == 2 else img


def single2tensor5(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1, 3).float().unsqueeze(0)


def single32tensor5(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).float().unsqueeze(0).unsqueeze(0)


def single42tensor4(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1, 3).float()


def tensor2img(tensor: torch.Tensor, out_type=np.uint8, min_max: Sequence[float] = (0, 1)) -> np.ndarray:
    """A 4-D (as a grid), 3-D or 2-D RGB tensor in ``min_max`` -> HxWxC BGR (or HxW) numpy image of
    ``out_type`` (uint8 rounded to [0, 255], else [0, 1]), as the original."""
    from ldm.util.images import make_grid

    tensor = tensor.detach().squeeze().float().cpu().clamp(*min_max)
    tensor = (tensor - min_max[0]) / (min_max[1] - min_max[0])
    if tensor.dim() == 4:
        tensor = make_grid(tensor, nrow=int(math.sqrt(len(tensor))), padding=2)
    if tensor.dim() == 3:
        img_np = np.transpose(tensor.numpy()[[2, 1, 0], :, :], (1, 2, 0))
    elif tensor.dim() == 2:
        img_np = tensor.numpy()
    else:
        raise TypeError(f"Only support 4D, 3D and 2D tensor. But received with dimension: {tensor.dim()}")
    if out_type == np.uint8:
        img_np = (img_np * 255.0).round()
    return img_np.astype(out_type)


# ------------------------------------------------------------------------------------- augmentation
def augment_img(img: np.ndarray, mode: int = 0) -> np.ndarray:
    """One of the 8 flips / rotations of an HxW(xC) image (mode 0 is the identity)."""
    ops = {0: lambda x: x, 1: lambda x: np.flipud(np.rot90(x)), 2: np.flipud, 3: lambda x: np.rot90(x, k=3),
           4: lambda x: np.flipud(np.rot90(x, k=2)), 5: np.rot90, 6: lambda x: np.rot90(x, k=2),
           7: lambda x: np.flipud(np.rot90(x, k=3))}
    return ops[mode](img)


def augment_img_tensor4(img: torch.Tensor, mode: int = 0) -> torch.Tensor:
    """:func:`augment_img` for an NxCxHxW tensor."""
    ops = {0: lambda x: x, 1: lambda x: x.rot90(1, [2, 3]).flip([2]), 2: lambda x: x.flip([2]),
           3: lambda x: x.rot90(3, [2, 3]), 4: lambda x: x.rot90(2, [2, 3]).flip([2]),
           5: lambda x: x.rot90(1, [2, 3]), 6: lambda x: x.rot90(2, [2, 3]),
           7: lambda x: x.rot90(3, [2, 3]).flip([2])}
    return ops[mode](img)


def augment_img_tensor(img: torch.Tensor, mode: int = 0) -> torch.Tensor:
    """:func:`augment_img` for a CxHxW or NxCxHxW tensor (through numpy, as the original)."""
    size = img.size()
    img_np = img.detach().cpu().numpy()
    if len(size) == 3:
        img_np = np.transpose(img_np, (1, 2, 0))
    elif len(size) == 4:
        img_np = np.transpose(img_np, (2, 3, 1, 0))
    out = torch.from_numpy(np.ascontiguousarray(augment_img(img_np, mode=mode)))
    if len(size) == 3:
        out = out.permute(2, 0, 1)
    elif len(size) == 4:
        out = out.permute(3, 2, 0, 1)
    return out.type_as(img)


def augment_img_np3(img: np.ndarray, mode: int = 0) -> np.ndarray:
    """The 8 flips / transpositions of an HxWxC image, in the original's ``augment_img_np3`` order."""
    if mode & 4:
        img = img[:, ::-1, :]
    if mode in (2, 3, 6, 7):
        img = img[::-1, :, :]
    if mode % 2 == 1:
        img = img.transpose(1, 0, 2)
    return img


def augment_imgs(img_list: List[np.ndarray], hflip: bool = True, rot: bool = True) -> List[np.ndarray]:
    """The same random horizontal flip, vertical flip and transposition applied to every image of the list."""
    hflip = hflip and random.random() < 0.5
    vflip = rot and random.random() < 0.5
    rot90 = rot and random.random() < 0.5

    def _augment(img):
        if hflip:
            img = img[:, ::-1, :]
        if vflip:
            img = img[::-1, :, :]
        if rot90:
            img = img.transpose(1, 0, 2)
        return img

    return [_augment(img) for img in img_list]


# ------------------------------------------------------------------------------------ crop and shave
def modcrop(img_in: np.ndarray, scale: int) -> np.ndarray:
    """Crop an HxW or HxWxC image so both sides are multiples of ``scale`` (a copy)."""
    if img_in.ndim not in (2, 3):
        raise ValueError(f"Wrong img ndim: [{img_in.ndim}].")
    h, w = img_in.shape[:2]
    return np.copy(img_in[:h - h % scale, :w - w % scale, ...])


def shave(img_in: np.ndarray, border: int = 0) -> np.ndarray:
    """Cut ``border`` pixels off every side (a copy)."""
    h, w = img_in.shape[:2]
    return np.copy(img_in[border:h - border, border:w - border])


# ------------------------------------------------------------------------------------------ colour
_RGB2YCBCR = np.array([[65.481, -37.797, 112.0], [128.553, -74.203, -93.786], [24.966, 112.0, -18.214]])
_YCBCR2RGB = np.array([[0.00456621, 0.00456621, 0.00456621], [0, -0.00153632, 0.00791071],
                       [0.00625893, -0.00318811, 0]])


def _to_255(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) if img.dtype == np.uint8 else img.astype(np.float64) * 255.0


def _from_255(result: np.ndarray, dtype) -> np.ndarray:
    return (result.round() if dtype == np.uint8 else result / 255.0).astype(dtype)


def rgb2ycbcr(img: np.ndarray, only_y: bool = True) -> np.ndarray:
    """MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, studio range) for uint8 [0, 255] or float [0, 1] input, same
    type out; ``only_y`` returns just the luma."""
    x = _to_255(img)
    result = x @ _RGB2YCBCR[:, 0] / 255.0 + 16.0 if only_y else x @ _RGB2YCBCR / 255.0 + [16, 128, 128]
    return _from_255(result, img.dtype)


def ycbcr2rgb(img: np.ndarray) -> np.ndarray:
    """MATLAB's ``ycbcr2rgb``, uint8 [0, 255] or float [0, 1]."""
    result = _to_255(img) @ _YCBCR2RGB * 255.0 + [-222.921, 135.576, -276.836]
    return _from_255(result, img.dtype)


def bgr2ycbcr(img: np.ndarray, only_y: bool = True) -> np.ndarray:
    """:func:`rgb2ycbcr` for a BGR image."""
    return rgb2ycbcr(img[..., ::-1], only_y=only_y)


# ----------------------------------------------------------------------------------------- metrics
def calculate_psnr(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """PSNR in dB of two images in [0, 255], ``border`` pixels shaved; inf for identical images."""
    if img1.shape != img2.shape:
        raise ValueError("Input images must have the same dimensions.")
    h, w = img1.shape[:2]
    img1 = img1[border:h - border, border:w - border].astype(np.float64)
    img2 = img2[border:h - border, border:w - border].astype(np.float64)
    mse = np.mean((img1 - img2) ** 2)
    if mse == 0:
        return float("inf")
    return 20 * math.log10(255.0 / math.sqrt(mse))


def ssim(img1: np.ndarray, img2: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of two grey images in [0, 255]: 11x11 Gaussian window, sigma 1.5, valid part,
    as MATLAB's reference ``ssim_index``."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
    g = gaussian_kernel_1d(11, 1.5)
    window = np.outer(g, g)

    def filt(x):
        return convolve(x, window, mode="mirror")[5:-5, 5:-5]

    mu1, mu2 = filt(img1), filt(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    sigma1_sq = filt(img1 ** 2) - mu1_sq
    sigma2_sq = filt(img2 ** 2) - mu2_sq
    sigma12 = filt(img1 * img2) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def calculate_ssim(img1: np.ndarray, img2: np.ndarray, border: int = 0) -> float:
    """SSIM of two images in [0, 255] (grey or per-channel mean for 3 channels), ``border`` pixels shaved."""
    if img1.shape != img2.shape:
        raise ValueError("Input images must have the same dimensions.")
    h, w = img1.shape[:2]
    img1 = img1[border:h - border, border:w - border]
    img2 = img2[border:h - border, border:w - border]
    if img1.ndim == 2:
        return ssim(img1, img2)
    if img1.ndim == 3 and img1.shape[2] == 3:
        return float(np.mean([ssim(img1[:, :, i], img2[:, :, i]) for i in range(3)]))
    if img1.ndim == 3 and img1.shape[2] == 1:
        return ssim(np.squeeze(img1), np.squeeze(img2))
    raise ValueError("Wrong input image dimensions.")
