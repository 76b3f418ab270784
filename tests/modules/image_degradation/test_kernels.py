"""Blur kernels of kernels.py: normalisation, symmetry, orientation, shifts."""
import numpy as np
import pytest
import torch

from ldm.modules.image_degradation.kernels import (
    analytic_kernel,
    anisotropic_Gaussian,
    blur,
    fspecial,
    fspecial_gaussian,
    fspecial_laplacian,
    gen_kernel,
    gm_blur_kernel,
    shift_pixel,
)


def assert_point_symmetric(k):
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)


@pytest.mark.parametrize("hsize", [3, 6, 7, 25])
def test_fspecial_gaussian_sums_to_one_and_is_fully_symmetric(hsize):
    k = fspecial("gaussian", hsize, 1.3)
    assert k.shape == (hsize, hsize) and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1], atol=1e-15)
    np.testing.assert_allclose(k, k[:, ::-1], atol=1e-15)


def test_fspecial_gaussian_is_matlabs_closed_form():
    x = np.array([-1.0, 0.0, 1.0])
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / 2)
    np.testing.assert_allclose(fspecial_gaussian(3, 1.0), g / g.sum(), atol=1e-15)


def test_a_vanishing_even_gaussian_is_a_2x2_box_not_zeros():
    """The original returns an all-zero kernel here (every sample underflows), which blacks the image out."""
    k = fspecial_gaussian(6, 0.01)
    np.testing.assert_allclose(k[2:4, 2:4], 0.25)
    assert k.sum() == pytest.approx(1.0) and np.isfinite(k).all()
    assert fspecial_gaussian(5, 0.0)[2, 2] == 1.0
    narrow = anisotropic_Gaussian(ksize=6, theta=0.0, l1=1e-4, l2=1e-4)  # the original: 0 / 0 = NaN
    np.testing.assert_allclose(narrow[2:4, 2:4], 0.25)


def test_fspecial_laplacian_sums_to_zero_and_unknown_types_are_refused():
    assert fspecial_laplacian(0.2).sum() == pytest.approx(0.0)
    assert fspecial("laplacian", 0.0).tolist() == [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    with pytest.raises(ValueError, match="filter_type"):
        fspecial("motion", 3)


@pytest.mark.parametrize("ksize", [7, 10, 25])
def test_anisotropic_gaussian_sums_to_one_and_is_point_symmetric(ksize):
    k = anisotropic_Gaussian(ksize=ksize, theta=0.6, l1=5.0, l2=0.7)
    assert k.shape == (ksize, ksize) and k.sum() == pytest.approx(1.0)
    assert_point_symmetric(k)


def test_anisotropic_gaussian_is_isotropic_for_equal_eigenvalues_and_follows_theta():
    iso = anisotropic_Gaussian(ksize=9, theta=1.1, l1=2.0, l2=2.0)
    np.testing.assert_allclose(iso, iso.T, atol=1e-15)
    np.testing.assert_allclose(iso, fspecial_gaussian(9, np.sqrt(2.0)), atol=1e-12)
    along_x = anisotropic_Gaussian(ksize=15, theta=0.0, l1=8.0, l2=1.0)  # long axis at angle 0: along columns
    offsets = np.arange(15) - 7
    var_x = (along_x.sum(axis=0) * offsets ** 2).sum()
    var_y = (along_x.sum(axis=1) * offsets ** 2).sum()
    assert var_x > 4 * var_y
    np.testing.assert_allclose(anisotropic_Gaussian(15, np.pi / 2, 8.0, 1.0), along_x.T, atol=1e-12)


def test_gm_blur_kernel_is_the_gaussian_density_and_refuses_singular_covariances():
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    k = gm_blur_kernel([0.5, 0.0], cov, size=5)
    d1, d2 = np.array([-0.5, 0.0]), np.array([0.5, 1.0])  # pixels (2, 2) and (3, 3) relative to the mean
    inv = np.linalg.inv(cov)
    assert k[2, 2] / k[3, 3] == pytest.approx(np.exp(-0.5 * d1 @ inv @ d1 + 0.5 * d2 @ inv @ d2))
    with pytest.raises(ValueError, match="positive definite"):
        gm_blur_kernel([0, 0], np.diag([1.0, 0.0]))


def test_gen_kernel_is_normalised_and_follows_numpys_seed():
    np.random.seed(3)
    k = gen_kernel()
    np.random.seed(3)
    assert k.shape == (15, 15) and k.sum() == pytest.approx(1.0) and np.array_equal(k, gen_kernel())


def test_analytic_kernel_of_a_symmetric_kernel_is_normalised_and_symmetric():
    k4 = analytic_kernel(fspecial_gaussian(5, 1.0))
    assert k4.shape == (9, 9) and k4.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k4, k4.T, atol=1e-15)
    assert_point_symmetric(k4)


def test_shift_pixel_moves_a_delta_by_half_of_sf_minus_one():
    delta = np.zeros((7, 7))
    delta[3, 3] = 1
    np.testing.assert_allclose(shift_pixel(delta, 3), np.roll(delta, (-1, -1), axis=(0, 1)), atol=1e-15)
    np.testing.assert_allclose(shift_pixel(delta, 3, upper_left=False), np.roll(delta, (1, 1), axis=(0, 1)),
                               atol=1e-15)
    half = shift_pixel(delta, 2)  # half a pixel: shared equally by four pixels
    np.testing.assert_allclose(half[2:4, 2:4], 0.25, atol=1e-15)
    assert half.sum() == pytest.approx(1.0)
    rgb = shift_pixel(np.repeat(delta[:, :, None], 3, axis=2).astype(np.float32), 3)
    assert rgb.shape == (7, 7, 3) and rgb.dtype == np.float32


def test_blur_keeps_the_size_and_constant_images_for_odd_kernels():
    x = torch.full((2, 3, 10, 12), 0.5)
    k = torch.from_numpy(np.stack([fspecial_gaussian(5, 1.0), fspecial_gaussian(5, 2.0)])[:, None]).float()
    out = blur(x, k)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)
