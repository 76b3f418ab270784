"""Image resampling for the BSR degradations, written as separable (out x in) weight matrices.

Two families live here:

* MATLAB's ``imresize`` with the bicubic kernel (Keys 1981, a = -0.5), antialiased when shrinking and with
  symmetric borders, as ``imresize_np`` / ``imresize`` of the original ``utils_image.py`` (KAIR) compute it;
* ``cv2.resize`` for float and uint8 images, so that OpenCV is not needed: the three interpolations the BSRGAN
  pipelines draw from (``INTER_LINEAR``, ``INTER_CUBIC``: half-pixel centres, replicated borders, no
  antialiasing; ``INTER_AREA``: exact pixel-overlap averaging), plus ``INTER_NEAREST`` and ``INTER_LANCZOS4``
  (the other ``cv_*`` degradations of latent-diffusion's super-resolution data).

Every resize is "rows, then columns": ``out = M_h @ image @ M_w^T`` per channel, in float64.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np
import torch

# cv2's interpolation flags; the BSR pipelines draw from the middle three (``random.choice([1, 2, 3])``).
INTER_NEAREST = 0
INTER_LINEAR = 1
INTER_CUBIC = 2
INTER_AREA = 3
INTER_LANCZOS4 = 4
INTERPOLATIONS = (INTER_NEAREST, INTER_LINEAR, INTER_CUBIC, INTER_AREA, INTER_LANCZOS4)
RANDOM_INTERPOLATIONS = (INTER_LINEAR, INTER_CUBIC, INTER_AREA)

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


def cubic(x: ArrayOrTensor) -> ArrayOrTensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``imresize`` 'bicubic'); numpy or torch in, same out."""
    absx = abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


def _matlab_weights(in_length: int, out_length: int, scale: float, antialiasing: bool
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """MATLAB ``imresize`` contributions: (weights, 1-based input indices), each (out_length, P), rows summing to 1,
    with the first/last column dropped where it is all zero (as MATLAB and KAIR do)."""
    kernel_width = 4.0
    shrink_antialiased = scale < 1 and antialiasing
    if shrink_antialiased:  # a stretched kernel interpolates and low-passes at once
        kernel_width = kernel_width / scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    # Output pixel x (1-based) is centred on input coordinate u; 0.5 maps to 0.5 and 0.5 + scale to 1.5.
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - indices
    weights = scale * cubic(distance * scale) if shrink_antialiased else cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    if np.any(weights[:, 0] == 0):
        weights, indices = weights[:, 1:], indices[:, 1:]
    if np.any(weights[:, -1] == 0):
        weights, indices = weights[:, :-1], indices[:, :-1]
    return weights, indices


def calculate_weights_indices(in_length: int, out_length: int, scale: float, kernel: str = "cubic",
                              kernel_width: float = 4, antialiasing: bool = True):
    """The original's helper: weights (out_length, P), 0-based indices into the input padded with ``sym_len_s``
    mirrored pixels before and ``sym_len_e`` after, and those two pad lengths. Only the cubic kernel of width 4
    exists, as in the original."""
    if kernel != "cubic" or kernel_width != 4:
        raise ValueError(f"only kernel='cubic' with kernel_width=4 is supported, got {kernel!r}, {kernel_width}")
    weights, indices = _matlab_weights(in_length, out_length, scale, antialiasing)
    sym_len_s = int(-indices.min() + 1)
    sym_len_e = int(indices.max() - in_length)
    indices = indices + sym_len_s - 1
    return torch.from_numpy(weights), torch.from_numpy(indices), sym_len_s, sym_len_e


def _symmetric(indices: np.ndarray, length: int) -> np.ndarray:
    """Map 1-based indices outside [1, length] back inside by symmetric reflection (edge repeated), as MATLAB."""
    aux = np.concatenate([np.arange(length), np.arange(length)[::-1]])
    return aux[np.mod(indices.astype(np.int64) - 1, 2 * length)]


def matlab_resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """The (out_length, in_length) matrix of MATLAB's bicubic ``imresize`` along one axis."""
    weights, indices = _matlab_weights(in_length, out_length, scale, antialiasing)
    matrix = np.zeros((out_length, in_length))
    rows = np.repeat(np.arange(out_length), weights.shape[1])
    np.add.at(matrix, (rows, _symmetric(indices, in_length).ravel()), weights.ravel())
    return matrix


def _apply_axis(x: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """``matrix @ x`` along ``axis`` (float64), using that each row of ``matrix`` is non-zero only on a band of
    neighbouring input pixels: a weighted sum of a few gathered slices instead of a dense product."""
    out_length, in_length = matrix.shape
    nonzero = matrix != 0
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    last = np.where(nonzero.any(axis=1), in_length - 1 - nonzero[:, ::-1].argmax(axis=1), 0)
    taps = int((last - first).max()) + 1
    first = np.minimum(first, in_length - taps)
    indices = first[:, None] + np.arange(taps)[None, :]
    weights = np.take_along_axis(matrix, indices, axis=1)
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((out_length,) + x.shape[1:])
    shape = (out_length,) + (1,) * (x.ndim - 1)
    for tap in range(taps):
        out += weights[:, tap].reshape(shape) * x[indices[:, tap]]
    return np.moveaxis(out, 0, axis)


def _apply_hw(image: np.ndarray, m_h: np.ndarray, m_w: np.ndarray) -> np.ndarray:
    """``m_h @ image @ m_w.T`` over the first two axes of an HxW or HxWxC array (float64 result)."""
    return _apply_axis(_apply_axis(np.asarray(image), m_h, 0), m_w, 1)


def _check_scale(scale: float, shape) -> Tuple[int, int]:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out_h, out_w = math.ceil(shape[0] * scale), math.ceil(shape[1] * scale)
    return out_h, out_w


def imresize_np(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` for an HxWxC or HxW numpy image in [0, 1] (no rounding or
    clipping); output size ceil(H * scale) x ceil(W * scale), float32 as the original returns."""
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize_np expects an HxW or HxWxC array, got shape {img.shape}")
    out_h, out_w = _check_scale(scale, img.shape)
    m_h = matlab_resize_matrix(img.shape[0], out_h, scale, antialiasing)
    m_w = matlab_resize_matrix(img.shape[1], out_w, scale, antialiasing)
    return _apply_hw(img, m_h, m_w).astype(np.float32)


def imresize(img: torch.Tensor, scale: float, antialiasing: bool = True) -> torch.Tensor:
    """MATLAB bicubic ``imresize`` for a CxHxW or HxW tensor in [0, 1]; returns a float32 tensor (not rounded).
    Unlike the original, the input is left unchanged."""
    if img.dim() not in (2, 3):
        raise ValueError(f"imresize expects a CxHxW or HxW tensor, got shape {tuple(img.shape)}")
    out_h, out_w = _check_scale(scale, img.shape[-2:])
    m_h = torch.from_numpy(matlab_resize_matrix(img.shape[-2], out_h, scale, antialiasing))
    m_w = torch.from_numpy(matlab_resize_matrix(img.shape[-1], out_w, scale, antialiasing))
    out = m_h @ img.detach().cpu().double() @ m_w.T
    return out.float()


def _opencv_matrix(in_length: int, out_length: int, interpolation: int) -> np.ndarray:
    """The (out_length, in_length) matrix of ``cv2.resize`` along one axis for float images."""
    matrix = np.zeros((out_length, in_length))
    rows = np.arange(out_length)
    scale = in_length / out_length
    if interpolation == INTER_AREA:
        # Output pixel i covers [i * scale, (i + 1) * scale) of the input: average what it overlaps. This is
        # cv2's INTER_AREA both ways (shrinking: box averages; enlarging: nearest with a linear blend at seams).
        start, stop = rows * scale, (rows + 1) * scale
        pixels = np.arange(in_length)
        overlap = np.minimum(stop[:, None], pixels[None, :] + 1) - np.maximum(start[:, None], pixels[None, :])
        matrix = np.clip(overlap, 0, None)
        return matrix / matrix.sum(axis=1, keepdims=True)
    if interpolation == INTER_NEAREST:  # OpenCV's nearest: floor(i * scale), no half-pixel offset
        matrix[rows, np.minimum(np.floor(rows * scale).astype(np.int64), in_length - 1)] = 1
        return matrix
    source = (rows + 0.5) * scale - 0.5  # half-pixel centres
    base = np.floor(source)
    frac = source - base
    if interpolation == INTER_LINEAR:
        below, above = base < 0, base >= in_length - 1  # cv2 clamps the coordinate, not just the taps
        base, frac = np.where(below, 0, np.where(above, in_length - 1, base)), np.where(below | above, 0, frac)
        taps = [(0, 1 - frac), (1, frac)]
    elif interpolation == INTER_CUBIC:
        a = -0.75  # OpenCV's cubic coefficient
        f1, f2 = frac + 1, 1 - frac
        w0 = ((a * f1 - 5 * a) * f1 + 8 * a) * f1 - 4 * a
        w1 = ((a + 2) * frac - (a + 3)) * frac * frac + 1
        w2 = ((a + 2) * f2 - (a + 3)) * f2 * f2 + 1
        taps = [(-1, w0), (0, w1), (1, w2), (2, 1 - w0 - w1 - w2)]
    elif interpolation == INTER_LANCZOS4:
        # Lanczos window a = 4 over 8 taps, normalised to sum 1; an exact hit takes the pixel itself.
        offsets = np.arange(-3, 5)
        distance = frac[:, None] - offsets[None, :]
        weights = np.sinc(distance) * np.sinc(distance / 4)
        weights = np.where(frac[:, None] < np.finfo(np.float32).eps, offsets[None, :] == 0, weights)
        weights = weights / weights.sum(axis=1, keepdims=True)
        taps = [(offset, weights[:, i]) for i, offset in enumerate(offsets)]
    else:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS} (cv2 INTER_NEAREST, INTER_LINEAR, "
                         f"INTER_CUBIC, INTER_AREA, INTER_LANCZOS4), got {interpolation!r}")
    for offset, weight in taps:
        columns = np.clip(base + offset, 0, in_length - 1).astype(np.int64)  # replicated border
        np.add.at(matrix, (rows, columns), weight)
    return matrix


def resize(img: np.ndarray, size: Tuple[int, int], interpolation: int = INTER_LINEAR) -> np.ndarray:
    """``cv2.resize(img, size, interpolation=...)`` for an HxW(xC) numpy image: ``size`` is (width, height) as in
    OpenCV; ``interpolation`` is 0 (nearest), 1 (bilinear), 2 (bicubic, a = -0.75), 3 (area) or 4 (Lanczos-4).
    Float images keep their dtype (no clipping); uint8 images are rounded and saturated, as OpenCV does."""
    img = np.asarray(img)
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"resize target (width, height) must be positive, got {size}")
    if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"resize expects a non-empty HxW or HxWxC image, got shape {img.shape}")
    m_h = _opencv_matrix(img.shape[0], height, interpolation)
    m_w = _opencv_matrix(img.shape[1], width, interpolation)
    out = _apply_hw(img, m_h, m_w)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(img.dtype)
    return out.astype(img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32)


def linear_sample_matrix(positions: np.ndarray, length: int) -> np.ndarray:
    """Rows that sample a length-``length`` signal by linear interpolation at ``positions`` (clipped to the
    signal), the 1-D half of ``scipy.interpolate.interp2d(kind='linear')`` on a regular grid."""
    positions = np.clip(np.asarray(positions, dtype=np.float64), 0, length - 1)
    base = np.minimum(np.floor(positions), max(length - 2, 0)).astype(np.int64)
    frac = positions - base
    matrix = np.zeros((len(positions), length))
    rows = np.arange(len(positions))
    np.add.at(matrix, (rows, base), 1 - frac)
    np.add.at(matrix, (rows, np.minimum(base + 1, length - 1)), frac)
    return matrix
