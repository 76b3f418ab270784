"""bsrgan_light.py: the lighter degradations behind latent-diffusion's bsr_sr model."""
import random

import numpy as np
import pytest

from ldm.modules.image_degradation import bsrgan, bsrgan_light, degradation_fn_bsr, degradation_fn_bsr_light
from ldm.modules.image_degradation.utils_image import calculate_psnr, imresize_np, single2uint, uint2single

LIGHT_NAMES = ["add_blur", "add_resize", "add_Gaussian_noise", "add_JPEG_noise", "random_crop", "fspecial",
               "anisotropic_Gaussian", "shift_pixel", "degradation_bsrgan", "degradation_bsrgan_variant"]


def seed(value):
    random.seed(value)
    np.random.seed(value)


def photo(h=64, w=64):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 3) * np.cos(y / 4)], axis=2)
    return (img * 255).round().astype(np.uint8)


def test_the_original_names_exist():
    assert [name for name in LIGHT_NAMES if not callable(getattr(bsrgan_light, name, None))] == []
    assert degradation_fn_bsr_light is bsrgan_light.degradation_bsrgan_variant


@pytest.mark.parametrize("sf", [2, 4])
def test_variant_returns_a_uint8_image_of_the_low_resolution_size(sf):
    for value in range(6):
        seed(value)
        out = degradation_fn_bsr_light(photo(), sf=sf)["image"]
        assert out.dtype == np.uint8 and out.shape == (64 // sf, 64 // sf, 3)


def test_variant_is_deterministic_under_fixed_seeds_and_differs_across_seeds():
    outputs = []
    for value in (7, 7, 8):
        seed(value)
        outputs.append(degradation_fn_bsr_light(photo(), sf=4)["image"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_variant_up_returns_the_input_size():
    seed(0)
    out = degradation_fn_bsr_light(photo(48, 40), sf=4, up=True)["image"]
    assert out.dtype == np.uint8 and out.shape == (48, 40, 3)


def test_light_degrades_less_than_bsrgan():
    image = photo()
    reference = single2uint(imresize_np(uint2single(image), 1 / 4))
    light, full = [], []
    for value in range(8):
        seed(value)
        light.append(calculate_psnr(reference, degradation_fn_bsr_light(image, sf=4)["image"]))
        seed(value)
        full.append(calculate_psnr(reference, degradation_fn_bsr(image, sf=4)["image"]))
    assert np.mean(light) > np.mean(full)


def test_jpeg_quality_factors_are_80_to_95_against_bsrgans_30_to_95(monkeypatch):
    from ldm.modules.image_degradation import degradations

    qualities = []
    monkeypatch.setattr(degradations, "jpeg_roundtrip", lambda img, quality: qualities.append(quality) or img)
    img = uint2single(photo(8, 8))
    seed(0)
    for _ in range(200):
        bsrgan_light.add_JPEG_noise(img)
    light, qualities[:] = list(qualities), []
    for _ in range(200):
        bsrgan.add_JPEG_noise(img)
    assert min(light) == 80 and max(light) == 95
    assert 30 <= min(qualities) < 80 and max(qualities) <= 95


def test_degradation_bsrgan_returns_aligned_float_patches():
    seed(1)
    lq, hq = bsrgan_light.degradation_bsrgan(uint2single(photo()), sf=2, lq_patchsize=16)
    assert lq.shape == (16, 16, 3) and hq.shape == (32, 32, 3) and lq.dtype == np.float32
