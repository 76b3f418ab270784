"""Blur kernels of the BSR degradation model (Zhang et al. 2021, "Designing a Practical Degradation Model for
Deep Blind Image Super-Resolution", Sec. 3.1): isotropic and anisotropic Gaussians, MATLAB's ``fspecial``,
the random kernels of SRMD/KernelGAN, and the helpers that shift or compose them. Names and arguments are
those of the original ``bsrgan.py``.

Gaussian kernels are normalised in log space (the largest sample is exp(0) before normalising), so a very
narrow kernel of even size becomes the box over its nearest samples instead of 0/0 (NaN) or an all-zero
kernel, which the originals return when every sample underflows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ldm.modules.image_degradation.resampling import linear_sample_matrix


def analytic_kernel(k: np.ndarray) -> np.ndarray:
    """The x4 kernel equivalent to applying the x2 kernel ``k`` twice (KernelGAN, Bell-Kligler et al. 2019,
    appendix): k convolved with itself dilated by 2, edges cropped by k_size // 2, normalised to sum 1."""
    k_size = k.shape[0]
    big_k = np.zeros((3 * k_size - 2, 3 * k_size - 2))
    for r in range(k_size):
        for c in range(k_size):
            big_k[2 * r:2 * r + k_size, 2 * c:2 * c + k_size] += k[r, c] * k
    crop = k_size // 2
    cropped = big_k[crop:-crop, crop:-crop]
    return cropped / cropped.sum()


def gm_blur_kernel(mean: Sequence[float], cov: np.ndarray, size: int = 15) -> np.ndarray:
    """A size x size Gaussian kernel with covariance ``cov`` centred at ``mean`` (offsets from the kernel centre,
    (x, y) = (column, row)), sampled at pixel centres and normalised to sum 1."""
    cov = np.asarray(cov, dtype=np.float64)
    if np.linalg.eigvalsh((cov + cov.T) / 2).min() <= 0:
        raise ValueError(f"cov must be positive definite, got {cov.tolist()}")
    offsets = np.arange(size) - (size - 1) / 2  # pixel centres about the kernel centre
    cx, cy = np.meshgrid(offsets - mean[0], offsets - mean[1])
    d = np.stack([cx, cy], axis=-1)
    exponent = -0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
    k = np.exp(exponent - exponent.max())
    return k / k.sum()


def anisotropic_Gaussian(ksize: int = 15, theta: float = np.pi, l1: float = 6, l2: float = 6) -> np.ndarray:
    """An anisotropic Gaussian kernel: eigenvalues ``l1`` (along angle ``theta``) and ``l2`` (across it) of the
    covariance; l1 == l2 gives an isotropic Gaussian. Paper ranges: theta in [0, pi], l1, l2 in [0.1, 50]."""
    v = np.array([np.cos(theta), np.sin(theta)])
    V = np.array([[v[0], v[1]], [v[1], -v[0]]])  # a reflection: its own inverse
    sigma = V @ np.diag([l1, l2]) @ V
    return gm_blur_kernel(mean=[0, 0], cov=sigma, size=ksize)


def shift_pixel(x: np.ndarray, sf: int, upper_left: bool = True) -> np.ndarray:
    """Shift an HxW(xC) image (or kernel) by (sf - 1) / 2 pixels towards the upper left (or lower right) with
    bilinear interpolation, clamping at the border, so that ``img[0::sf]`` after blurring with a shifted kernel
    is centred like a bicubic downsampling."""
    h, w = x.shape[:2]
    shift = (sf - 1) * 0.5 if upper_left else -(sf - 1) * 0.5
    rows = linear_sample_matrix(np.arange(h) + shift, h)
    cols = linear_sample_matrix(np.arange(w) + shift, w)
    out = np.tensordot(rows, np.asarray(x, dtype=np.float64), axes=(1, 0))
    out = np.moveaxis(np.tensordot(cols, out, axes=(1, 1)), 0, 1)
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


def blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Blur a batch NxCxHxW with one kernel per sample (Nx1xhxw), replicate padding, cross-correlation;
    the output keeps the input size for odd kernels."""
    n, c = x.shape[:2]
    p1, p2 = (k.shape[-2] - 1) // 2, (k.shape[-1] - 1) // 2
    x = F.pad(x, pad=(p1, p2, p1, p2), mode="replicate")
    weight = k.repeat(1, c, 1, 1).view(-1, 1, k.shape[2], k.shape[3])
    x = x.view(1, -1, x.shape[2], x.shape[3])
    x = F.conv2d(x, weight, bias=None, stride=1, padding=0, groups=n * c)
    return x.view(n, c, x.shape[2], x.shape[3])


def gen_kernel(k_size: np.ndarray = np.array([15, 15]), scale_factor: np.ndarray = np.array([4, 4]),
               min_var: float = 0.6, max_var: float = 10.0, noise_level: float = 0) -> np.ndarray:
    """A random anisotropic Gaussian kernel, shifted by -(sf - 1) / 2 for aligned downsampling, with optional
    multiplicative uniform noise (KAIR's version of Shocher's BlindSR_dataset_generator). Draws
    ``np.random.rand`` for both eigenvalues, the angle and the noise, as the original."""
    k_size = np.asarray(k_size)
    scale_factor = np.asarray(scale_factor)
    lambda_1 = min_var + np.random.rand() * (max_var - min_var)
    lambda_2 = min_var + np.random.rand() * (max_var - min_var)
    theta = np.random.rand() * np.pi
    noise = -noise_level + np.random.rand(*k_size) * noise_level * 2

    q = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv_sigma = np.linalg.inv(q @ np.diag([lambda_1, lambda_2]) @ q.T)
    mu = k_size // 2 - 0.5 * (scale_factor - 1)  # expectation shifted for aligned downsampling
    x, y = np.meshgrid(range(k_size[0]), range(k_size[1]))
    zz = np.stack([x, y], axis=-1) - mu
    raw_kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", zz, inv_sigma, zz)) * (1 + noise)
    return raw_kernel / np.sum(raw_kernel)


def fspecial_gaussian(hsize: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', hsize, sigma)``: samples below eps * max set to 0, normalised to sum 1.
    sigma <= 0 is taken as its limit, the box over the samples nearest the centre."""
    sigma = max(float(sigma), 1e-8)
    half = (hsize - 1.0) / 2.0
    x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
    arg = -(x * x + y * y) / (2 * sigma * sigma)
    h = np.exp(arg - arg.max())
    h[h < np.finfo(float).eps * h.max()] = 0
    return h / h.sum()


def fspecial_laplacian(alpha: float) -> np.ndarray:
    """MATLAB ``fspecial('laplacian', alpha)``: the 3x3 Laplacian with shape parameter alpha in [0, 1]."""
    alpha = max(0.0, min(alpha, 1.0))
    h1 = alpha / (alpha + 1)
    h2 = (1 - alpha) / (alpha + 1)
    return np.array([[h1, h2, h1], [h2, -4 / (alpha + 1), h2], [h1, h2, h1]])


def fspecial(filter_type: str, *args, **kwargs) -> np.ndarray:
    """MATLAB ``fspecial`` for 'gaussian' (hsize, sigma) and 'laplacian' (alpha)."""
    if filter_type == "gaussian":
        return fspecial_gaussian(*args, **kwargs)
    if filter_type == "laplacian":
        return fspecial_laplacian(*args, **kwargs)
    raise ValueError(f"filter_type must be 'gaussian' or 'laplacian', got {filter_type!r}")
