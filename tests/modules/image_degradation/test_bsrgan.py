"""The BSRGAN pipelines of bsrgan.py (and pipelines.py), as latent-diffusion's super-resolution data uses them."""
import random

import numpy as np
import pytest

from ldm.modules.image_degradation import bsrgan, degradation_fn_bsr
from ldm.modules.image_degradation.utils_image import imresize_np, uint2single

ORIGINAL_NAMES = [
    "modcrop_np", "analytic_kernel", "anisotropic_Gaussian", "gm_blur_kernel", "shift_pixel", "blur", "gen_kernel",
    "fspecial_gaussian", "fspecial_laplacian", "fspecial", "bicubic_degradation", "srmd_degradation",
    "dpsr_degradation", "classical_degradation", "add_sharpening", "add_blur", "add_resize", "add_Gaussian_noise",
    "add_speckle_noise", "add_Poisson_noise", "add_JPEG_noise", "random_crop", "degradation_bsrgan",
    "degradation_bsrgan_variant", "degradation_bsrgan_plus",
]


def seed(value):
    random.seed(value)
    np.random.seed(value)


def photo(h=64, w=64, offset=0):
    """A uint8 RGB test image with edges, gradients and texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin((x + offset) / 3) * np.cos(y / 4)], axis=2)
    img[h // 4:h // 2, w // 4:w // 2] = [0.9, 0.1, 0.2]
    return (img * 255).round().astype(np.uint8)


def test_the_original_names_exist():
    assert [name for name in ORIGINAL_NAMES if not callable(getattr(bsrgan, name, None))] == []
    assert degradation_fn_bsr is bsrgan.degradation_bsrgan_variant


@pytest.mark.parametrize("sf", [2, 4])
def test_variant_returns_a_uint8_image_of_the_low_resolution_size(sf):
    image = photo()
    for value in range(6):  # sf 4 halves first with p = 0.25; the step order varies
        seed(value)
        example = degradation_fn_bsr(image, sf=sf)
        assert list(example) == ["image"]
        assert example["image"].dtype == np.uint8 and example["image"].shape == (64 // sf, 64 // sf, 3)


def test_variant_crops_non_square_images_per_axis():
    """The original swaps height and width in its mod-crop; here each side is cut to a multiple of sf."""
    seed(0)
    assert degradation_fn_bsr(photo(66, 50), sf=4)["image"].shape == (16, 12, 3)
    seed(0)
    assert degradation_fn_bsr(photo(40, 72), sf=2)["image"].shape == (20, 36, 3)


def test_variant_is_deterministic_under_fixed_seeds_and_differs_across_seeds():
    image = photo()
    before = image.copy()
    outputs = []
    for value in (0, 0, 1, 2):
        seed(value)
        outputs.append(degradation_fn_bsr(image, sf=4)["image"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2]) and not np.array_equal(outputs[2], outputs[3])
    np.testing.assert_array_equal(image, before)


def test_variant_output_still_resembles_the_image():
    image = photo()
    reference = imresize_np(uint2single(image), 1 / 4)
    for value in range(4):
        seed(value)
        degraded = uint2single(degradation_fn_bsr(image, sf=4)["image"])
        assert np.abs(degraded - reference).mean() < 0.2


def test_variant_refuses_float_rgba_and_images_below_sf():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        degradation_fn_bsr(uint2single(photo()))
    with pytest.raises(ValueError, match="convert"):
        degradation_fn_bsr(np.zeros((16, 16, 4), np.uint8))
    with pytest.raises(ValueError, match="smaller than the scale factor"):
        degradation_fn_bsr(photo(3, 8), sf=4)


def test_degradation_bsrgan_returns_aligned_float_patches():
    img = uint2single(photo(64, 72))
    seed(3)
    lq, hq = bsrgan.degradation_bsrgan(img, sf=4, lq_patchsize=12)
    assert lq.shape == (12, 12, 3) and hq.shape == (48, 48, 3)
    assert lq.dtype == np.float32 and hq.dtype == np.float32
    assert 0 <= lq.min() and lq.max() <= 1
    with pytest.raises(ValueError, match="too small"):
        bsrgan.degradation_bsrgan(img, sf=4, lq_patchsize=17)


class CountingISP:
    """A stand-in camera ISP model: returns its inputs unchanged and counts the calls."""

    def __init__(self):
        self.calls = 0

    def forward(self, img, hq):
        self.calls += 1
        return img, hq


def test_degradation_bsrgan_runs_the_isp_model_sometimes():
    isp = CountingISP()
    img = uint2single(photo(32, 32))
    for value in range(16):
        seed(value)
        bsrgan.degradation_bsrgan(img, sf=2, lq_patchsize=8, isp_model=isp)
    assert 0 < isp.calls < 16


def test_degradation_bsrgan_plus_returns_aligned_float_patches():
    img = uint2single(photo(64, 64))
    for value in range(3):
        seed(value)
        lq, hq = bsrgan.degradation_bsrgan_plus(img, sf=4, lq_patchsize=8)
        assert lq.shape == (8, 8, 3) and hq.shape == (32, 32, 3)
        assert lq.dtype == np.float32 and 0 <= lq.min() and lq.max() <= 1
