"""MATLAB bicubic imresize and the OpenCV-style resizes of ldm/modules/image_degradation/resampling.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.modules.image_degradation.resampling import (
    INTER_AREA,
    INTER_CUBIC,
    INTER_LANCZOS4,
    INTER_LINEAR,
    INTER_NEAREST,
    calculate_weights_indices,
    imresize,
    imresize_np,
    resize,
)

# MATLAB imresize(x, 0.5, 'bicubic') of a length-4 signal, worked by hand: antialiased Keys kernel (a = -0.5)
# of width 8 at u = 1.5 and 3.5, symmetric borders (taps -2..5 fold onto 1..4).
HALF_OF_4 = np.array([[0.546875, 0.3984375, 0.1015625, -0.046875],
                      [-0.046875, 0.1015625, 0.3984375, 0.546875]])
# imresize(x, 2, 'bicubic') of a length-2 signal: u = 0.75, 1.25, 1.75, 2.25, kernel width 4, no antialiasing.
DOUBLE_OF_2 = np.array([[1.09375, -0.09375], [0.796875, 0.203125], [0.203125, 0.796875], [-0.09375, 1.09375]])


def test_imresize_np_halves_a_4x4_image_as_matlab_does():
    rows, cols = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 0.5, 0.25, 0.0])
    img = np.outer(rows, cols)[:, :, None].repeat(3, axis=2)
    out = imresize_np(img, 0.5)
    expected = np.outer(HALF_OF_4 @ rows, HALF_OF_4 @ cols)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 1], expected, atol=1e-6)
    np.testing.assert_allclose(imresize_np(np.array([[0.0, 1.0, 2.0, 3.0]] * 4), 0.5)[0], [0.4609375, 2.5390625],
                               atol=1e-6)


def test_imresize_np_doubles_a_2x2_image_as_matlab_does():
    img = np.array([[0.0, 1.0], [0.5, 0.25]])
    out = imresize_np(img, 2)
    assert out.shape == (4, 4)
    np.testing.assert_allclose(out, DOUBLE_OF_2 @ img @ DOUBLE_OF_2.T, atol=1e-6)


def test_imresize_np_at_scale_1_is_the_identity():
    img = np.random.default_rng(0).random((9, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(imresize_np(img, 1), img, atol=1e-6)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.7, 1.5, 2])
def test_imresize_np_keeps_a_constant_image_constant(scale):
    out = imresize_np(np.full((24, 20, 3), 0.3, dtype=np.float32), scale)
    assert out.shape == (int(np.ceil(24 * scale)), int(np.ceil(20 * scale)), 3)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_imresize_on_a_tensor_matches_imresize_np_and_leaves_the_input_alone():
    img = torch.rand(3, 12, 10)
    before = img.clone()
    out = imresize(img, 1 / 3)
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), imresize_np(img.permute(1, 2, 0).numpy(), 1 / 3),
                               atol=1e-6)
    assert torch.equal(img, before)
    assert imresize(torch.rand(12, 10), 0.5).shape == (6, 5)


def test_calculate_weights_indices_rows_sum_to_one_and_index_the_padded_signal():
    weights, indices, pad_start, pad_end = calculate_weights_indices(10, 5, 0.5, "cubic", 4, True)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(5, dtype=weights.dtype))
    assert indices.min() >= 0 and indices.max() < 10 + pad_start + pad_end


@pytest.mark.parametrize("size_in,size_out", [((37, 50), (13, 20)), ((16, 16), (40, 33)), ((20, 30), (7, 11))])
@pytest.mark.parametrize("interpolation,mode", [(INTER_LINEAR, "bilinear"), (INTER_CUBIC, "bicubic")])
def test_resize_matches_half_pixel_interpolation_of_torch(size_in, size_out, interpolation, mode):
    """cv2 INTER_LINEAR / INTER_CUBIC (a = -0.75, replicated border) are torch's align_corners=False modes."""
    img = np.random.default_rng(1).random((*size_in, 3))
    ours = resize(img, (size_out[1], size_out[0]), interpolation)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size_out, mode=mode, align_corners=False)
    np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=1e-10)


def test_area_resize_averages_blocks_and_replicates_when_enlarging():
    img = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(resize(img, (2, 2), INTER_AREA), [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(resize(img, (8, 8), INTER_AREA), img.repeat(2, axis=0).repeat(2, axis=1))
    # 3 -> 2 pixels: each output covers 1.5 input pixels.
    np.testing.assert_allclose(resize(np.array([[0.0, 3.0, 6.0]]), (2, 1), INTER_AREA), [[1.0, 5.0]])


def test_resize_keeps_float32_and_rounds_uint8():
    img = np.random.default_rng(2).random((10, 12, 3)).astype(np.float32)
    assert resize(img, (5, 4), INTER_CUBIC).dtype == np.float32
    as_uint8 = resize((img * 255).astype(np.uint8), (24, 20), INTER_CUBIC)
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == (20, 24, 3)
    np.testing.assert_array_equal(resize(np.full((6, 6, 3), 200, np.uint8), (3, 3), INTER_AREA), 200)


def test_resize_refuses_unknown_interpolations_and_empty_targets():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        resize(np.zeros((4, 4)), (2, 2), 7)
    with pytest.raises(ValueError, match="must be positive"):
        resize(np.zeros((4, 4)), (0, 2), INTER_LINEAR)


def test_nearest_resize_is_opencvs_floor_rule():
    """cv2 INTER_NEAREST reads pixel floor(i * in / out), as torch's 'nearest' mode does."""
    img = np.random.default_rng(3).random((13, 17, 3))
    for size_out in [(5, 7), (30, 40)]:
        ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size_out, mode="nearest")
        np.testing.assert_array_equal(resize(img, size_out[::-1], INTER_NEAREST), ref[0].permute(1, 2, 0).numpy())


def opencv_lanczos4_coefficients(x):
    """OpenCV's interpolateLanczos4 (imgproc/src/resize.cpp), written out for the test."""
    s45 = np.sqrt(0.5)
    cs = [(1, 0), (-s45, -s45), (0, 1), (s45, -s45), (-1, 0), (s45, s45), (0, -1), (-s45, s45)]
    y0 = -(x + 3) * np.pi * 0.25
    s0, c0 = np.sin(y0), np.cos(y0)
    coeffs = np.array([(cs[i][0] * s0 + cs[i][1] * c0) / (-(x + 3 - i) * np.pi * 0.25) ** 2 for i in range(8)])
    return coeffs / coeffs.sum()


def test_lanczos4_resize_uses_opencvs_coefficients_and_keeps_constants():
    row = np.zeros((1, 24))
    row[0, 10] = 1.0
    out = resize(row, (48, 1), INTER_LANCZOS4)
    # Output pixel 21 sits at source 21.5 / 2 - 0.5 = 10.25: taps 7..14, the delta is tap 3.
    assert out[0, 21] == pytest.approx(opencv_lanczos4_coefficients(0.25)[3], abs=1e-12)
    np.testing.assert_allclose(resize(np.full((9, 11), 0.3), (25, 4), INTER_LANCZOS4), 0.3, atol=1e-12)
    img = np.random.default_rng(4).random((6, 7))
    np.testing.assert_allclose(resize(img, (7, 6), INTER_LANCZOS4), img, atol=1e-12)
