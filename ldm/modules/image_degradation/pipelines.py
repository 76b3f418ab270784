"""The BSR degradation pipelines (Zhang et al. 2021, Sec. 3.4 "random shuffle"), written once and run with the
ranges of ``bsrgan`` or ``bsrgan_light`` (:class:`~ldm.modules.image_degradation.degradations.BSRSettings`).

Steps are drawn in the originals' order from Python's ``random`` and NumPy's global generator. The mod-crop
cuts each axis to a multiple of sf (the originals swap height and width there); a resize target of 0 pixels
becomes 1 (OpenCV raises); ``isp_model`` is used only by ``degradation_bsrgan`` and ``degradation_bsrgan_plus``,
as in the originals.
"""
from __future__ import annotations

import random
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ldm.modules.image_degradation.degradations import (
    BSRGAN,
    BSRSettings,
    add_blur,
    add_Gaussian_noise,
    add_JPEG_noise,
    add_Poisson_noise,
    add_resize,
    add_sharpening,
    add_speckle_noise,
    random_crop,
    random_interpolation,
    resize_to,
)
from ldm.modules.image_degradation.filters import convolve
from ldm.modules.image_degradation.kernels import fspecial, shift_pixel
from ldm.modules.image_degradation.resampling import INTER_CUBIC, imresize_np, resize
from ldm.modules.image_degradation.utils_image import single2uint, uint2single

ISP_PROB, JPEG_PROB, SCALE2_PROB = 0.25, 0.9, 0.25


def _mod_crop(img: np.ndarray, sf: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[:h - h % sf, :w - w % sf, ...].copy()


def _shuffled_steps() -> list:
    """A random order of the 7 steps with downsample2 (step 2) kept before downsample3 (step 3)."""
    order = random.sample(range(7), 7)
    idx2, idx3 = order.index(2), order.index(3)
    if idx2 > idx3:
        order[idx2], order[idx3] = order[idx3], order[idx2]
    return order


def _downsample1(img: np.ndarray, sf: int) -> Tuple[np.ndarray, int]:
    """With sf 4, p = 0.25: halve the image first (random cv2 interpolation or MATLAB bicubic), continue at sf 2."""
    if sf == 4 and random.random() < SCALE2_PROB:
        if np.random.rand() < 0.5:
            img = resize_to(img, int(1 / 2 * img.shape[1]), int(1 / 2 * img.shape[0]), random_interpolation())
        else:
            img = imresize_np(img, 1 / 2, True)
        return np.clip(img, 0.0, 1.0), 2
    return img, sf


def _downsample2(img: np.ndarray, sf: int, resize_prob: float) -> np.ndarray:
    """Resize by 1 / U(1, 2 sf) with a random interpolation (p = ``resize_prob``), else blur with a Gaussian
    shifted for alignment and keep every sf-th pixel."""
    if random.random() < resize_prob:
        sf1 = random.uniform(1, 2 * sf)
        img = resize_to(img, int(1 / sf1 * img.shape[1]), int(1 / sf1 * img.shape[0]), random_interpolation())
    else:
        k = fspecial("gaussian", 25, random.uniform(0.1, 0.6 * sf))
        k_shifted = shift_pixel(k, sf)
        img = convolve(img, k_shifted / k_shifted.sum(), mode="mirror")[0::sf, 0::sf, ...]
    return np.clip(img, 0.0, 1.0)


def _degrade(img: np.ndarray, sf: int, settings: BSRSettings, blurs: int, noise: Tuple[int, int],
             resize_prob: float, isp_model: Optional[Any], hq: Optional[np.ndarray]):
    """The shared body: downsample1, the 7 shuffled steps, the final JPEG. Returns (degraded, hq)."""
    img, sf = _downsample1(img, sf)
    for step in _shuffled_steps():
        if step < blurs:  # steps 0 and 1: blur (bsrgan_light's variant blurs only at step 0)
            img = add_blur(img, sf=sf, settings=settings)
        elif step == 2:
            width, height = img.shape[1], img.shape[0]  # downsample3 (always later) targets this size / sf
            img = _downsample2(img, sf, resize_prob)
        elif step == 3:
            img = np.clip(resize_to(img, int(1 / sf * width), int(1 / sf * height), random_interpolation()), 0, 1)
        elif step == 4:
            img = add_Gaussian_noise(img, noise_level1=noise[0], noise_level2=noise[1])
        elif step == 5:
            if random.random() < JPEG_PROB:
                img = add_JPEG_noise(img, settings.jpeg_quality)
        elif step == 6 and hq is not None:  # camera sensor noise (the variants leave this step out)
            if random.random() < ISP_PROB and isp_model is not None:
                with torch.no_grad():
                    img, hq = isp_model.forward(img.copy(), hq)
    return add_JPEG_noise(img, settings.jpeg_quality), hq


def _cropped_for_patches(img: np.ndarray, sf: int, lq_patchsize: int) -> np.ndarray:
    """``img`` cropped to multiples of ``sf``; it must hold a high-quality patch of lq_patchsize * sf a side."""
    h1, w1 = img.shape[:2]
    img = _mod_crop(img, sf)
    h, w = img.shape[:2]
    if h < lq_patchsize * sf or w < lq_patchsize * sf:
        raise ValueError(f"img size ({h1}X{w1}) is too small: need at least lq_patchsize * sf = "
                         f"{lq_patchsize * sf} pixels a side")
    return img


def degradation_bsrgan(img: np.ndarray, sf: int = 4, lq_patchsize: int = 72, isp_model: Optional[Any] = None,
                       settings: BSRSettings = BSRGAN) -> Tuple[np.ndarray, np.ndarray]:
    """BSRGAN's degradation of an HxWxC float image in [0, 1], at least (lq_patchsize * sf) pixels a side.
    Returns (low-quality patch lq_patchsize^2, aligned high-quality patch (lq_patchsize * sf)^2), in [0, 1]."""
    img = _cropped_for_patches(img, sf, lq_patchsize)
    hq = img.copy()
    img, hq = _degrade(img, sf, settings, blurs=2, noise=settings.bsrgan_noise, resize_prob=0.75,
                       isp_model=isp_model, hq=hq)
    return random_crop(img, hq, sf, lq_patchsize)


def degradation_bsrgan_variant(image: np.ndarray, sf: int = 4, isp_model: Optional[Any] = None,
                               settings: BSRSettings = BSRGAN, up: bool = False) -> Dict[str, np.ndarray]:
    """The latent-diffusion variant: a whole uint8 HxWx3 image in, ``{"image": degraded uint8 image}`` out, of
    size (H // sf) x (W // sf) (or H x W again, bicubic, with ``up``). ``isp_model`` is accepted and unused,
    as in the original."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degradation_bsrgan_variant expects a uint8 HxWx3 RGB image, got {image.dtype} of shape "
                         f"{image.shape} (convert with PIL's .convert('RGB') and np.asarray)")
    h1, w1 = image.shape[:2]
    if h1 < sf or w1 < sf:
        raise ValueError(f"the image ({h1}x{w1}) is smaller than the scale factor sf={sf}")
    image = _mod_crop(uint2single(image), sf)
    image, _ = _degrade(image, sf, settings, blurs=settings.variant_blurs, noise=settings.variant_noise,
                        resize_prob=settings.variant_resize_prob, isp_model=None, hq=None)
    image = single2uint(image)
    if up:
        image = resize(image, (w1, h1), INTER_CUBIC)
    return {"image": image}


def degradation_bsrgan_plus(img: np.ndarray, sf: int = 4, shuffle_prob: float = 0.5, use_sharp: bool = True,
                            lq_patchsize: int = 64, isp_model: Optional[Any] = None,
                            settings: BSRSettings = BSRGAN) -> Tuple[np.ndarray, np.ndarray]:
    """BSRGAN combined with Real-ESRGAN's second-order degradation: optional sharpening of the target, two
    rounds of blur / resize / noise / JPEG (fully shuffled with p = ``shuffle_prob``, else shuffled within the
    noise groups), a final resize to 1 / sf and JPEG, and a random aligned crop. Returns (lq, hq) patches."""
    img = _cropped_for_patches(img, sf, lq_patchsize)
    if use_sharp:
        img = add_sharpening(img)
    hq = img.copy()

    if random.random() < shuffle_prob:
        shuffle_order = random.sample(range(13), 13)
    else:
        shuffle_order = list(range(13))
        shuffle_order[2:6] = random.sample(shuffle_order[2:6], 4)  # noises shuffled; JPEG (6) stays 7th
        shuffle_order[9:13] = random.sample(shuffle_order[9:13], 4)

    poisson_prob, speckle_prob, isp_prob = 0.1, 0.1, 0.1
    for step in shuffle_order:
        stage = step - 7 if step >= 7 else step  # steps 7..12 repeat steps 0..5; JPEG (6) comes once
        if stage == 0:
            img = add_blur(img, sf=sf, settings=settings)
        elif stage == 1:
            img = add_resize(img, sf=sf)
        elif stage == 2:
            img = add_Gaussian_noise(img, noise_level1=2, noise_level2=25)
        elif stage == 3:
            if random.random() < poisson_prob:
                img = add_Poisson_noise(img)
        elif stage == 4:
            if random.random() < speckle_prob:
                img = add_speckle_noise(img)
        elif stage == 5:
            if random.random() < isp_prob and isp_model is not None:
                with torch.no_grad():
                    img, hq = isp_model.forward(img.copy(), hq)
        elif stage == 6:
            img = add_JPEG_noise(img, settings.jpeg_quality)

    img = resize_to(img, int(1 / sf * hq.shape[1]), int(1 / sf * hq.shape[0]), random_interpolation())
    img = add_JPEG_noise(img, settings.jpeg_quality)
    return random_crop(img, hq, sf, lq_patchsize)
