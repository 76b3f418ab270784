"""MiDaS input transforms: output sizes of each resize method, the bicubic kernel (checked
against a plain implementation of OpenCV's INTER_CUBIC: Keys' kernel a = -0.75, half-pixel
centres, clamped edges), normalisation and CHW layout."""
import numpy as np
import pytest

from ldm.modules.midas.midas.transforms import Compose, NormalizeImage, PrepareForNet, Resize, resize_array


def _cubic(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def _cubic_matrix(n_in, n_out):
    """(n_out, n_in) weights of a 1-D INTER_CUBIC resize."""
    matrix = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        for offset in range(-1, 3):
            matrix[i, min(max(base + offset, 0), n_in - 1)] += _cubic(src - (base + offset))
    return matrix


@pytest.mark.parametrize("shape,size", [((20, 30), (12, 17)), ((9, 7), (16, 21))])
def test_bicubic_resize_is_opencvs_inter_cubic(shape, size):
    rng = np.random.default_rng(0)
    image = rng.random((*shape, 3))
    resized = resize_array(image, width=size[1], height=size[0], mode="bicubic")
    rows, cols = _cubic_matrix(shape[0], size[0]), _cubic_matrix(shape[1], size[1])
    expected = np.einsum("ih,hwc,jw->ijc", rows, image, cols)
    assert resized.shape == (*size, 3) and resized.dtype == np.float64
    np.testing.assert_allclose(resized, expected, atol=1e-10)


@pytest.mark.parametrize("method,hw,expected_wh", [
    ("minimal", (512, 512), (384, 384)),
    ("minimal", (512, 768), (576, 384)),    # height needs the smaller change: x0.75 for both sides
    ("minimal", (300, 400), (384, 288)),    # x0.96 (fits the width) changes less than x1.28
    ("upper_bound", (480, 640), (384, 288)),
    ("upper_bound", (100, 100), (384, 384)),
    ("lower_bound", (480, 640), (512, 384)),
])
def test_resize_keeps_the_aspect_ratio_to_multiples_of_32(method, hw, expected_wh):
    resize = Resize(384, 384, keep_aspect_ratio=True, ensure_multiple_of=32, resize_method=method)
    assert resize.get_size(hw[1], hw[0]) == expected_wh


def test_sides_round_half_to_even_as_numpy():
    resize = Resize(384, 384, keep_aspect_ratio=False, ensure_multiple_of=32, resize_method="minimal")
    assert resize.constrain_to_multiple_of(16 * 32 + 16) == 16 * 32   # 16.5 -> 16
    assert resize.constrain_to_multiple_of(17 * 32 + 16) == 18 * 32   # 17.5 -> 18


def test_transform_pipeline_gives_chw_float32_normalised_and_targets_nearest():
    image = np.random.default_rng(1).random((64, 96, 3)).astype(np.float32)
    disparity = np.arange(64 * 96, dtype=np.float32).reshape(64, 96)
    mask = disparity % 2 == 0
    transform = Compose([Resize(32, 32, resize_target=True, keep_aspect_ratio=True, ensure_multiple_of=32,
                                resize_method="lower_bound"),
                         NormalizeImage(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]), PrepareForNet()])
    sample = transform({"image": image, "disparity": disparity, "mask": mask})
    assert sample["image"].shape == (3, 32, 64) and sample["image"].dtype == np.float32
    assert sample["image"].flags["C_CONTIGUOUS"]
    resized = resize_array(image, 64, 32, "bicubic")
    np.testing.assert_allclose(sample["image"], (resized.transpose(2, 0, 1) - 0.5) / 0.5, rtol=1e-6)
    # INTER_NEAREST: source index floor(destination index * scale)
    np.testing.assert_array_equal(sample["disparity"], disparity[::2][:, (np.arange(64) * 1.5).astype(int)])
    assert sample["mask"].dtype == np.float32 and set(np.unique(sample["mask"])) <= {0.0, 1.0}


def test_resize_refuses_unknown_methods_and_non_image_input():
    with pytest.raises(ValueError, match="resize_method"):
        Resize(384, 384, resize_method="maximal")
    with pytest.raises(ValueError, match="HWC image"):
        Resize(384, 384)({"image": np.zeros((8, 8))})
