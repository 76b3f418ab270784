"""The stand-ins for torchvision's Resize, RandomCrop and CenterCrop: torchvision's sizes and offsets."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.transforms import CenterCrop, RandomCrop, Resize
from ldm.util import get_obj_from_str


@pytest.fixture
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))


def test_resize_scales_the_shorter_side_and_truncates_the_longer(image):
    assert Resize(20)(image).size == (26, 20)  # int(20 * 40 / 30)
    assert Resize([10, 12])(image).size == (12, 10)
    expected = np.asarray(image.resize((26, 20), resample=Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(Resize(20, interpolation=3)(image)), expected)


def test_crops_take_the_centre_or_a_seeded_random_window(image):
    centre = np.asarray(CenterCrop(11)(image))
    assert np.array_equal(centre, np.asarray(image)[10:21, 14:25])  # round(19 / 2) = 10, round(29 / 2) = 14
    torch.manual_seed(3)
    first = np.asarray(RandomCrop(8)(image))
    torch.manual_seed(3)
    assert np.array_equal(first, np.asarray(RandomCrop(8)(image))) and first.shape == (8, 8, 3)
    with pytest.raises(DatasetError, match="does not fit a 30x40 image"):
        CenterCrop(31)(image)


def test_the_torchvision_paths_of_the_configs_resolve_here():
    assert get_obj_from_str("torchvision.transforms.Resize") is Resize
    assert get_obj_from_str("torchvision.transforms.CenterCrop") is CenterCrop
