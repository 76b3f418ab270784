"""2-D filtering of numpy images: the two filters the BSR degradations use, with the border rules of the
originals (``scipy.ndimage.convolve`` and ``cv2.GaussianBlur``), so neither SciPy nor OpenCV is needed.
Convolutions run through numpy's FFT in float64 (blur kernels reach 25 x 25 pixels).
"""
from __future__ import annotations

import numpy as np

# scipy.ndimage border modes -> numpy.pad modes.
_PAD_MODES = {"mirror": "reflect", "reflect": "symmetric", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


def _fft_length(n: int) -> int:
    """The smallest length >= n with no prime factor above 5 (fast for the FFT)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def convolve(img: np.ndarray, kernel: np.ndarray, mode: str = "mirror") -> np.ndarray:
    """``scipy.ndimage.convolve(img, kernel[..., None], mode=mode)``: every channel of an HxW or HxWxC image
    convolved (kernel flipped) with a 2-D kernel; for a kernel of n taps along an axis, output pixel i reads
    input pixels i + n//2 - j (scipy's alignment, also for even n). Border ``mode`` as in scipy: 'mirror'
    (d c b | a b c d), 'reflect' (b a | a b), 'nearest', 'wrap' or 'constant' (zeros). Float images keep
    their dtype; other images come back as float32."""
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    img = np.asarray(img)
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be 2-D, got shape {kernel.shape}")
    if img.ndim not in (2, 3):
        raise ValueError(f"convolve expects an HxW or HxWxC image, got shape {img.shape}")
    dtype = img.dtype if img.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    (kh, kw), (h, w) = kernel.shape, img.shape[:2]
    pads = [(n - 1 - n // 2, n // 2) for n in kernel.shape]
    padded = np.pad(img.astype(np.float64), pads + [(0, 0)] * (img.ndim - 2), mode=_PAD_MODES[mode])
    # Linear convolution of the padded image with the kernel; output pixel i sits at index i + n - 1, beyond
    # the circular wrap-around as long as the FFT is at least as long as the padded image.
    shape = (_fft_length(padded.shape[0]), _fft_length(padded.shape[1]))
    spectrum = np.fft.rfft2(padded, s=shape, axes=(0, 1))
    kernel_spectrum = np.fft.rfft2(kernel, s=shape)
    if img.ndim == 3:
        kernel_spectrum = kernel_spectrum[:, :, None]
    full = np.fft.irfft2(spectrum * kernel_spectrum, s=shape, axes=(0, 1))
    return full[kh - 1:kh - 1 + h, kw - 1:kw - 1 + w].astype(dtype)


# cv2.getGaussianKernel's fixed kernels for the small odd sizes when sigma <= 0.
_SMALL_GAUSSIANS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}


def gaussian_kernel_1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma)``: normalised samples of a Gaussian; sigma <= 0 means
    0.3 * ((ksize - 1) * 0.5 - 1) + 0.8, or OpenCV's fixed binomial kernels for ksize 1, 3, 5, 7."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"ksize must be a positive odd number, got {ksize}")
    if sigma <= 0:
        if ksize in _SMALL_GAUSSIANS:
            return np.array(_SMALL_GAUSSIANS[ksize])
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize) - (ksize - 1) / 2
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(img: np.ndarray, ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.GaussianBlur(img, (ksize, ksize), sigma)``: separable Gaussian, border reflected without repeating
    the edge pixel (OpenCV's BORDER_REFLECT_101)."""
    kernel = gaussian_kernel_1d(ksize, sigma)
    return convolve(convolve(img, kernel[:, None], mode="mirror"), kernel[None, :], mode="mirror")
