"""The single degradations of degradations.py: shapes, dtypes, ranges, seeding."""
import random

import numpy as np
import pytest

from ldm.modules.image_degradation.degradations import (
    BSRGAN,
    BSRGAN_LIGHT,
    add_blur,
    add_Gaussian_noise,
    add_JPEG_noise,
    add_Poisson_noise,
    add_resize,
    add_sharpening,
    add_speckle_noise,
    bicubic_degradation,
    classical_degradation,
    dpsr_degradation,
    jpeg_roundtrip,
    modcrop_np,
    random_crop,
    srmd_degradation,
)
from ldm.modules.image_degradation.kernels import fspecial_gaussian
from ldm.modules.image_degradation.utils_image import calculate_psnr, single2uint


def seed(value):
    random.seed(value)
    np.random.seed(value)


@pytest.fixture
def image():
    """A smooth 32x32 float32 RGB image in [0.1, 0.9] with some texture."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    img = np.stack([0.1 + 0.8 * x, 0.1 + 0.8 * y, 0.5 + 0.4 * np.sin(6 * x) * np.cos(5 * y)], axis=2)
    return img.astype(np.float32)


@pytest.mark.parametrize("settings", [BSRGAN, BSRGAN_LIGHT])
def test_add_blur_keeps_shape_dtype_and_constant_images(settings):
    flat = np.full((20, 24, 3), 0.6, np.float32)
    for value in range(6):
        seed(value)
        out = add_blur(flat, sf=4, settings=settings)
        assert out.shape == flat.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, 0.6, atol=1e-6)


def support_width(img):
    columns = np.nonzero(img.max(axis=(0, 2)) > 1e-9)[0]
    return columns.max() - columns.min() + 1


def test_light_blur_kernels_are_at_most_14_pixels_and_bsrgans_reach_beyond():
    point = np.zeros((41, 41, 3), np.float32)
    point[20, 20] = 1
    light, full = [], []
    for value in range(40):
        seed(value)
        light.append(support_width(add_blur(point, sf=4, settings=BSRGAN_LIGHT)))
        seed(value)
        full.append(support_width(add_blur(point, sf=4, settings=BSRGAN)))
    assert max(light) <= 14 and max(full) > 14


def test_add_resize_scales_within_its_range(image):
    for value in range(10):
        seed(value)
        out = add_resize(image, sf=4)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert 32 * 0.5 / 4 - 1 <= out.shape[0] <= 64 and out.shape[2] == 3


@pytest.mark.parametrize("noise", [add_Gaussian_noise, add_speckle_noise, add_Poisson_noise])
def test_noises_keep_shape_dtype_and_range_and_follow_the_seeds(noise, image):
    outs = []
    for value in range(8):  # covers the colour, grey and correlated branches
        seed(value)
        out = noise(image)
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
        assert not np.allclose(out, image, atol=1e-3)
        outs.append(out)
    seed(5)
    np.testing.assert_array_equal(noise(image), outs[5])


def test_gaussian_noise_level_follows_its_range(image):
    quiet, loud = [], []
    for value in range(8):
        seed(value)
        quiet.append(np.abs(add_Gaussian_noise(image, 1, 2) - image).mean())
        seed(value)
        loud.append(np.abs(add_Gaussian_noise(image, 20, 25) - image).mean())
    assert max(quiet) < 2.5 / 255 and min(loud) > 5 / 255


def test_jpeg_noise_changes_the_image_but_keeps_its_shape(image):
    seed(0)
    out = add_JPEG_noise(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert not np.array_equal(single2uint(out), single2uint(image))
    grey = single2uint(image[:, :, :1])
    assert jpeg_roundtrip(grey, 50).shape == grey.shape


def test_jpeg_quality_orders_the_damage(image):
    original = single2uint(image)
    psnr = [calculate_psnr(original, jpeg_roundtrip(original, q)) for q in (10, 30, 95)]
    assert psnr[0] < psnr[1] < psnr[2]
    seed(1)
    light = calculate_psnr(original, single2uint(add_JPEG_noise(image, BSRGAN_LIGHT.jpeg_quality)))
    assert light > psnr[1]


def test_add_sharpening_keeps_flat_regions_and_raises_edge_contrast():
    step = np.zeros((24, 24, 3), np.float32)
    step[:, 12:] = 0.5
    step += 0.25
    out = add_sharpening(step)
    assert out.shape == step.shape
    np.testing.assert_allclose(add_sharpening(np.full((16, 16, 3), 0.3, np.float32)), 0.3, atol=1e-6)
    assert out[:, 12].mean() > step[:, 12].mean() and out[:, 11].mean() < step[:, 11].mean()


def test_random_crop_returns_aligned_patches():
    hq = np.random.default_rng(0).random((64, 48, 3))
    lq = hq[::4, ::4]
    seed(2)
    lq_patch, hq_patch = random_crop(lq, hq, sf=4, lq_patchsize=8)
    assert lq_patch.shape == (8, 8, 3) and hq_patch.shape == (32, 32, 3)
    np.testing.assert_array_equal(hq_patch[::4, ::4], lq_patch)
    with pytest.raises(ValueError, match="smaller than lq_patchsize"):
        random_crop(lq, hq, sf=4, lq_patchsize=13)


def test_classical_degradation_models_shapes(image):
    k = fspecial_gaussian(7, 1.2)
    assert bicubic_degradation(image, sf=2).shape == (16, 16, 3)
    assert srmd_degradation(image, k, sf=4).shape == (8, 8, 3)
    assert dpsr_degradation(image, k, sf=4).shape == (8, 8, 3)
    assert classical_degradation(image, k, sf=3).shape == (11, 11, 3)
    assert modcrop_np(np.zeros((30, 21, 3)), 4).shape == (28, 20, 3)
