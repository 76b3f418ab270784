"""The image helpers of utils_image.py: conversions, augmentation, colour, metrics, files."""
import numpy as np
import pytest
import torch

from ldm.modules.image_degradation import utils_image as util


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def test_uint_and_single_round_trip(rgb):
    single = util.uint2single(rgb)
    assert single.dtype == np.float32 and single.max() <= 1
    np.testing.assert_array_equal(util.single2uint(single), rgb)
    assert util.single2uint(np.array([-0.2, 0.5, 1.7])).tolist() == [0, 128, 255]
    np.testing.assert_array_equal(util.single2uint16(util.uint162single(np.array([0, 1234, 65535]))),
                                  [0, 1234, 65535])


def test_tensor_conversions_have_the_expected_layouts(rgb):
    t3, t4 = util.uint2tensor3(rgb), util.uint2tensor4(rgb)
    assert t3.shape == (3, 6, 8) and t3.dtype == torch.float32 and float(t3.max()) <= 1
    assert t4.shape == (1, 3, 6, 8)
    np.testing.assert_array_equal(util.tensor2uint(t4), rgb)
    assert util.uint2tensor3(rgb[:, :, 0]).shape == (1, 6, 8)
    single = util.uint2single(rgb)
    assert util.single2tensor3(single).shape == (3, 6, 8) and util.single2tensor4(single).shape == (1, 3, 6, 8)
    np.testing.assert_array_equal(util.tensor2single(util.single2tensor4(single)), single)
    assert util.tensor2single3(torch.rand(1, 1, 6, 8)).shape == (6, 8, 1)


def test_tensor2img_gives_bgr_uint8_and_tiles_batches():
    t = torch.zeros(3, 4, 5)
    t[0] = 1.0  # red
    img = util.tensor2img(t)
    assert img.dtype == np.uint8 and img.shape == (4, 5, 3) and img[0, 0].tolist() == [0, 0, 255]
    assert util.tensor2img(torch.rand(4, 3, 4, 4)).shape == (2 + 2 * 6, 2 + 2 * 6, 3)


def test_the_eight_augmentations_are_distinct_and_agree_between_numpy_and_torch(rgb):
    outs = [util.augment_img(rgb, mode) for mode in range(8)]
    assert len({(o.shape, o.tobytes()) for o in outs}) == 8
    batch = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    for mode in range(8):
        np.testing.assert_array_equal(util.augment_img_tensor4(batch, mode)[0].permute(1, 2, 0).numpy(), outs[mode])
        np.testing.assert_array_equal(util.augment_img_tensor(batch[0], mode).permute(1, 2, 0).numpy(), outs[mode])
    np3 = [util.augment_img_np3(rgb, mode) for mode in range(8)]
    assert {(o.shape, o.tobytes()) for o in np3} == {(o.shape, o.tobytes()) for o in outs}
    flipped = util.augment_imgs([rgb, rgb], hflip=True, rot=True)
    np.testing.assert_array_equal(flipped[0], flipped[1])


def test_modcrop_and_shave():
    assert util.modcrop(np.zeros((10, 13, 3)), 4).shape == (8, 12, 3)
    assert util.modcrop(np.zeros((10, 13)), 3).shape == (9, 12)
    assert util.shave(np.zeros((10, 13, 3)), 2).shape == (6, 9, 3)


def test_ycbcr_follows_bt601_studio_range_and_leaves_the_input_alone():
    img = np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    assert util.rgb2ycbcr(img).tolist() == [[235, 16]]
    ycbcr = util.rgb2ycbcr(img, only_y=False)
    assert ycbcr.tolist() == [[[235, 128, 128], [16, 128, 128]]]
    np.testing.assert_array_equal(util.ycbcr2rgb(ycbcr), img)
    floats = np.random.default_rng(1).random((4, 4, 3)).astype(np.float32)
    before = floats.copy()
    np.testing.assert_allclose(util.ycbcr2rgb(util.rgb2ycbcr(floats, only_y=False)), floats, atol=1e-4)
    np.testing.assert_array_equal(floats, before)
    np.testing.assert_allclose(util.bgr2ycbcr(floats[..., ::-1]), util.rgb2ycbcr(floats))


def test_psnr_and_ssim():
    a = np.full((16, 16), 100.0)
    b = a + 5.0
    assert util.calculate_psnr(a, a) == float("inf")
    assert util.calculate_psnr(a, b) == pytest.approx(20 * np.log10(255 / 5))
    texture = np.random.default_rng(2).integers(0, 256, (24, 24, 3)).astype(np.float64)
    assert util.calculate_ssim(texture, texture) == pytest.approx(1.0)
    assert util.calculate_ssim(texture, texture[::-1].copy()) < 0.5
    with pytest.raises(ValueError, match="same dimensions"):
        util.calculate_psnr(a, b[:8])


def test_image_files_round_trip(tmp_path, rgb):
    util.mkdirs([str(tmp_path / "a" / "b")])
    util.imsave(rgb, str(tmp_path / "a" / "b" / "x.png"))
    util.imwrite(rgb[:, :, 0], str(tmp_path / "a" / "grey.png"))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    np.testing.assert_array_equal(util.imread_uint(str(tmp_path / "a" / "b" / "x.png")), rgb)
    assert util.imread_uint(str(tmp_path / "a" / "grey.png"), n_channels=1).shape == (6, 8, 1)
    assert util.imread_uint(str(tmp_path / "a" / "grey.png"), n_channels=3).shape == (6, 8, 3)
    found = util.get_image_paths(str(tmp_path))
    assert found == [str(tmp_path / "a" / "b" / "x.png"), str(tmp_path / "a" / "grey.png")]
    assert util.get_image_paths(None) is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image file"):
        util.get_image_paths(str(tmp_path / "empty"))
