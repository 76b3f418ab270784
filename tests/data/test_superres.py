"""The super-resolution pair pipeline: crop, area resize, degradation by name, parameter checks."""
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.base import DatasetError
from ldm.data.image_paths import smallest_max_size
from ldm.data.superres import DEGRADATIONS, SuperresPairs, degradation_process
from ldm.modules.image_degradation.resampling import INTER_AREA, INTER_NEAREST


class OneImage(SuperresPairs):
    path = None

    def get_base(self) -> Dataset:
        return [{"file_path_": self.path, "label": 7}]


@pytest.fixture
def one_image(tmp_path):
    rng = np.random.default_rng(0)
    OneImage.path = str(tmp_path / "image.png")
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(OneImage.path)
    return OneImage


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_every_degradation_gives_a_low_resolution_copy(one_image, degradation):
    example = one_image(size=16, degradation=degradation, downscale_f=2)[0]
    assert example["image"].shape == (16, 16, 3) and example["LR_image"].shape == (8, 8, 3)
    assert example["label"] == 7 and example["LR_image"].dtype == np.float32
    assert -1.0 <= example["LR_image"].min() and example["LR_image"].max() <= 1.0


def test_a_centre_crop_of_the_whole_side_is_the_area_resized_centre_square(one_image):
    example = one_image(size=12, degradation="cv_nearest", downscale_f=3, min_crop_f=1.0, max_crop_f=1.0,
                        random_crop=False)[0]
    image = np.asarray(Image.open(one_image.path))
    expected = smallest_max_size(image[:, 8:32], 12, INTER_AREA)
    np.testing.assert_allclose(example["image"], expected / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(example["LR_image"], smallest_max_size(expected, 4, INTER_NEAREST) / 127.5 - 1.0,
                               atol=1e-6)


@pytest.mark.parametrize("params, message", [
    ({"size": None, "degradation": "bsrgan"}, "size must be a whole number"),
    ({"size": 18, "degradation": "bsrgan", "downscale_f": 4}, r"size \(18\) must be a multiple of downscale_f"),
    ({"size": 16, "degradation": "bsrgan", "min_crop_f": 0.8, "max_crop_f": 0.5}, "need 0 < min_crop_f"),
    ({"size": 16, "degradation": "cv_cubic"}, "degradation must be one of bsrgan, bsrgan_light, cv_nearest"),
])
def test_bad_parameters_are_named(one_image, params, message):
    with pytest.raises(DatasetError, match=message):
        one_image(**params)


def test_pil_degradations_resize_with_pillow():
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    low = degradation_process("pil_bicubic", 2, 4)(image)
    assert np.array_equal(low, np.asarray(Image.fromarray(image).resize((4, 4), Image.Resampling.BICUBIC)))
