"""The single degradations of the BSR model (Zhang et al. 2021, Sec. 3) on HxWxC float images in [0, 1]:
blur, resize, Gaussian / speckle / Poisson noise, JPEG compression, sharpening, cropping, and the classical
degradation models (bicubic, SRMD, DPSR). Randomness comes from Python's ``random`` and NumPy's global
generator in the order the originals draw it, so ``random.seed`` / ``np.random.seed`` fix the result.

The ranges that differ between ``bsrgan`` and ``bsrgan_light`` are gathered in :class:`BSRSettings`.
"""
from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image

from ldm.modules.image_degradation.filters import convolve, gaussian_blur
from ldm.modules.image_degradation.kernels import anisotropic_Gaussian, fspecial
from ldm.modules.image_degradation.resampling import RANDOM_INTERPOLATIONS, imresize_np, resize
from ldm.modules.image_degradation.utils_image import single2uint, uint2single


@dataclass(frozen=True)
class BSRSettings:
    """The random ranges of one BSR degradation family.

    Blur kernel sizes are ``step * random.randint(low, high) + 3`` for ``(low, high, step)``."""

    blur_width_scale: float             # Gaussian widths: (4 + sf) and (2 + 0.2 sf), times this
    anisotropic_ksize: Tuple[int, int, int]
    isotropic_ksize: Tuple[int, int, int]
    jpeg_quality: Tuple[int, int]       # add_JPEG_noise quality factor, inclusive
    bsrgan_noise: Tuple[int, int]       # degradation_bsrgan's Gaussian noise levels (of 255)
    variant_noise: Tuple[int, int]      # degradation_bsrgan_variant's Gaussian noise levels
    variant_blurs: int                  # blur steps in degradation_bsrgan_variant (2 or 1)
    variant_resize_prob: float          # degradation_bsrgan_variant: P(random resize) vs shifted-kernel blur


BSRGAN = BSRSettings(blur_width_scale=1.0, anisotropic_ksize=(2, 11, 2), isotropic_ksize=(2, 11, 2),
                     jpeg_quality=(30, 95), bsrgan_noise=(2, 25), variant_noise=(2, 25), variant_blurs=2,
                     variant_resize_prob=0.75)
BSRGAN_LIGHT = BSRSettings(blur_width_scale=0.25, anisotropic_ksize=(2, 11, 1), isotropic_ksize=(2, 4, 1),
                           jpeg_quality=(80, 95), bsrgan_noise=(2, 8), variant_noise=(1, 2), variant_blurs=1,
                           variant_resize_prob=0.8)


def modcrop_np(img: np.ndarray, sf: int) -> np.ndarray:
    """Crop an HxW(xC) image so both sides are multiples of ``sf`` (a copy)."""
    h, w = img.shape[:2]
    return np.copy(img[:h - h % sf, :w - w % sf, ...])


def bicubic_degradation(x: np.ndarray, sf: int = 3) -> np.ndarray:
    """Bicubic downsampling by ``sf`` (MATLAB ``imresize``)."""
    return imresize_np(x, scale=1 / sf)


def srmd_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """Blur with ``k`` (circular borders), then bicubic downsampling (SRMD, Zhang et al. CVPR 2018)."""
    return bicubic_degradation(convolve(x, k, mode="wrap"), sf=sf)


def dpsr_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """Bicubic downsampling, then blur with ``k`` (DPSR, Zhang et al. CVPR 2019)."""
    return convolve(bicubic_degradation(x, sf=sf), k, mode="wrap")


def classical_degradation(x: np.ndarray, k: np.ndarray, sf: int = 3) -> np.ndarray:
    """Blur with ``k`` (circular borders), then keep every ``sf``-th pixel."""
    return convolve(x, k, mode="wrap")[0::sf, 0::sf, ...]


def add_sharpening(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> np.ndarray:
    """Unsharp masking as in Real-ESRGAN: K = I + weight (I - B) where |I - B| * 255 > threshold, blended with a
    blurred mask; B is a Gaussian blur of size ``radius`` (made odd)."""
    if radius % 2 == 0:
        radius += 1
    residual = img - gaussian_blur(img, radius)
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft_mask = gaussian_blur(mask, radius)
    sharp = np.clip(img + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


def _kernel_size(spec: Tuple[int, int, int]) -> int:
    low, high, step = spec
    return step * random.randint(low, high) + 3


def add_blur(img: np.ndarray, sf: int = 4, settings: BSRSettings = BSRGAN) -> np.ndarray:
    """Blur with a random anisotropic (p = 0.5) or isotropic Gaussian kernel (paper Sec. 3.1), mirror borders."""
    wd2 = (4.0 + sf) * settings.blur_width_scale
    wd = (2.0 + 0.2 * sf) * settings.blur_width_scale
    if random.random() < 0.5:
        l1 = wd2 * random.random()
        l2 = wd2 * random.random()
        k = anisotropic_Gaussian(ksize=_kernel_size(settings.anisotropic_ksize), theta=random.random() * np.pi,
                                 l1=l1, l2=l2)
    else:
        k = fspecial("gaussian", _kernel_size(settings.isotropic_ksize), wd * random.random())
    return convolve(img, k, mode="mirror")


def random_interpolation() -> int:
    """One of cv2's bilinear, bicubic and area interpolations, uniformly (``random.choice([1, 2, 3])``)."""
    return random.choice(list(RANDOM_INTERPOLATIONS))


def resize_to(img: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    """``cv2.resize(img, (width, height), interpolation)``; a side that would be 0 pixels is made 1."""
    return resize(img, (max(1, width), max(1, height)), interpolation)


def add_resize(img: np.ndarray, sf: int = 4) -> np.ndarray:
    """Resize by a random factor: up in [1, 2] (p = 0.2), down in [0.5 / sf, 1] (p = 0.7), else unchanged;
    random interpolation; clipped to [0, 1]."""
    rnum = np.random.rand()
    if rnum > 0.8:
        sf1 = random.uniform(1, 2)
    elif rnum < 0.7:
        sf1 = random.uniform(0.5 / sf, 1)
    else:
        sf1 = 1.0
    img = resize_to(img, int(sf1 * img.shape[1]), int(sf1 * img.shape[0]), random_interpolation())
    return np.clip(img, 0.0, 1.0)


def _orth(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the range of ``a`` (``scipy.linalg.orth``)."""
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    tol = max(a.shape) * np.finfo(float).eps * (s.max() if s.size else 0)
    return u[:, : int(np.sum(s > tol))]


def _noise(shape: Tuple[int, ...], noise_level: int, noise_level2: int, rnum: float) -> np.ndarray:
    """Additive noise of the BSR model: colour (rnum > 0.6), grey (rnum < 0.4) or channel-correlated with a
    random covariance of scale ``noise_level2`` (paper Sec. 3.3)."""
    if rnum > 0.6:
        return np.random.normal(0, noise_level / 255.0, shape).astype(np.float32)
    if rnum < 0.4:
        return np.random.normal(0, noise_level / 255.0, (*shape[:2], 1)).astype(np.float32)
    level = noise_level2 / 255.0
    d = np.diag(np.random.rand(3))
    u = _orth(np.random.rand(3, 3))
    cov = np.abs(level ** 2 * (u.T @ d @ u))
    with warnings.catch_warnings():  # |cov| need not be positive semi-definite; the originals let numpy warn
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.random.multivariate_normal([0, 0, 0], cov, shape[:2]).astype(np.float32)


def add_Gaussian_noise(img: np.ndarray, noise_level1: int = 2, noise_level2: int = 25) -> np.ndarray:
    """Add Gaussian noise of level in [noise_level1, noise_level2] / 255 (colour, grey or correlated); clip."""
    noise_level = random.randint(noise_level1, noise_level2)
    rnum = np.random.rand()
    img = img + _noise(img.shape, noise_level, noise_level2, rnum)
    return np.clip(img, 0.0, 1.0)


def add_speckle_noise(img: np.ndarray, noise_level1: int = 2, noise_level2: int = 25) -> np.ndarray:
    """Add multiplicative (speckle) noise img * n, n as in :func:`add_Gaussian_noise`; clip."""
    noise_level = random.randint(noise_level1, noise_level2)
    img = np.clip(img, 0.0, 1.0)
    rnum = random.random()
    img = img + img * _noise(img.shape, noise_level, noise_level2, rnum)
    return np.clip(img, 0.0, 1.0)


def add_Poisson_noise(img: np.ndarray) -> np.ndarray:
    """Add Poisson (shot) noise with 10^[2, 4] photons at full scale, per colour (p = 0.5) or on luminance."""
    img = np.clip((img * 255.0).round(), 0, 255) / 255.0
    vals = 10 ** (2 * random.random() + 2.0)
    if random.random() < 0.5:
        img = np.random.poisson(img * vals).astype(np.float32) / vals
    else:
        img_gray = np.dot(img[..., :3], [0.299, 0.587, 0.114])
        img_gray = np.clip((img_gray * 255.0).round(), 0, 255) / 255.0
        noise_gray = np.random.poisson(img_gray * vals).astype(np.float32) / vals - img_gray
        img = img + noise_gray[:, :, np.newaxis]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode a uint8 HxW(x1/x3) image as JPEG at ``quality`` (libjpeg through Pillow, 4:2:0 chroma subsampling
    as OpenCV's default) and decode it."""
    squeeze = img.ndim == 3 and img.shape[2] == 1
    buffer = io.BytesIO()
    Image.fromarray(img[:, :, 0] if squeeze else img).save(buffer, format="JPEG", quality=int(quality),
                                                           subsampling="4:2:0")
    decoded = np.asarray(Image.open(buffer))
    return decoded[:, :, None] if squeeze else decoded


def add_JPEG_noise(img: np.ndarray, quality_range: Tuple[int, int] = BSRGAN.jpeg_quality) -> np.ndarray:
    """JPEG-compress at a random quality factor in ``quality_range`` (inclusive); float [0, 1] in and out."""
    quality_factor = random.randint(*quality_range)
    return uint2single(jpeg_roundtrip(single2uint(img), quality_factor))


def random_crop(lq: np.ndarray, hq: np.ndarray, sf: int = 4, lq_patchsize: int = 64):
    """A random ``lq_patchsize`` patch of ``lq`` and the aligned ``lq_patchsize * sf`` patch of ``hq``."""
    h, w = lq.shape[:2]
    if h < lq_patchsize or w < lq_patchsize:
        raise ValueError(f"the low-quality image ({h}x{w}) is smaller than lq_patchsize={lq_patchsize}")
    rnd_h = random.randint(0, h - lq_patchsize)
    rnd_w = random.randint(0, w - lq_patchsize)
    lq = lq[rnd_h:rnd_h + lq_patchsize, rnd_w:rnd_w + lq_patchsize, :]
    rnd_h_hq, rnd_w_hq = int(rnd_h * sf), int(rnd_w * sf)
    hq = hq[rnd_h_hq:rnd_h_hq + lq_patchsize * sf, rnd_w_hq:rnd_w_hq + lq_patchsize * sf, :]
    return lq, hq
