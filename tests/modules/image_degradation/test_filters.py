"""scipy.ndimage-compatible convolution and the OpenCV-style Gaussian blur of filters.py."""
import numpy as np
import pytest

from ldm.modules.image_degradation.filters import convolve, gaussian_blur, gaussian_kernel_1d


@pytest.mark.parametrize("taps", [3, 4, 5, 6])
def test_convolve_places_a_kernel_as_scipy_does_for_odd_and_even_sizes(taps):
    """A delta at 5 spreads to pixels 5 + n//2 - j for tap j (scipy's alignment, measured with scipy 1.17)."""
    delta = np.zeros((1, 11))
    delta[0, 5] = 1
    kernel = np.arange(1.0, taps + 1)[None, :]
    expected = np.zeros(11)
    for j in range(taps):
        expected[5 - taps // 2 + j] = kernel[0, j]
    np.testing.assert_allclose(convolve(delta, kernel)[0], expected, atol=1e-12)


def test_convolve_borders_mirror_and_wrap():
    row = np.array([[1.0, 2.0, 3.0, 4.0]])
    take_left = np.array([[0.0, 0.0, 1.0]])  # out[i] = in[i - 1]
    np.testing.assert_allclose(convolve(row, take_left, mode="mirror"), [[2.0, 1.0, 2.0, 3.0]], atol=1e-12)
    np.testing.assert_allclose(convolve(row, take_left, mode="wrap"), [[4.0, 1.0, 2.0, 3.0]], atol=1e-12)
    np.testing.assert_allclose(convolve(row, take_left, mode="nearest"), [[1.0, 1.0, 2.0, 3.0]], atol=1e-12)


def test_convolve_keeps_shape_and_float_dtype_per_channel():
    img = np.random.default_rng(0).random((9, 13, 3)).astype(np.float32)
    kernel = np.random.default_rng(1).random((5, 4))
    out = convolve(img, kernel)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 1], convolve(img[:, :, 1], kernel), atol=1e-6)


def test_convolve_agrees_with_scipy():
    from scipy import ndimage  # a reference only: in the test extra, never a runtime dependency

    rng = np.random.default_rng(2)
    img = rng.random((17, 12, 3))
    for shape in [(3, 3), (6, 5), (25, 25)]:
        kernel = rng.random(shape)
        for mode in ("mirror", "wrap"):
            np.testing.assert_allclose(convolve(img, kernel, mode), ndimage.convolve(img, kernel[..., None], mode=mode),
                                       rtol=1e-10)


def test_convolve_refuses_unknown_modes():
    with pytest.raises(ValueError, match="mode must be one of"):
        convolve(np.zeros((4, 4)), np.ones((3, 3)), mode="edge")


def test_gaussian_kernels_are_normalised_symmetric_and_use_opencvs_sigma():
    assert gaussian_kernel_1d(5).tolist() == [0.0625, 0.25, 0.375, 0.25, 0.0625]
    k = gaussian_kernel_1d(51)  # sigma = 0.3 * (25 - 1) + 0.8 = 8
    assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1])
    assert k[25] / k[33] == pytest.approx(np.exp(64 / 128))
    with pytest.raises(ValueError, match="positive odd"):
        gaussian_kernel_1d(4)


def test_gaussian_blur_keeps_constants_and_smooths_noise():
    assert np.allclose(gaussian_blur(np.full((20, 20, 3), 0.4, np.float32), 51), 0.4, atol=1e-6)
    noise = np.random.default_rng(3).random((32, 32))
    assert gaussian_blur(noise, 9).std() < noise.std() / 3
