"""Large LaMa-style masks: binary, of the image's size, repeatable from a seed, also for small images."""
import numpy as np
import pytest

from ldm.data.synthetic_mask import SETTINGS, make_mask, scaled_settings


@pytest.mark.parametrize("mode", list(SETTINGS))
@pytest.mark.parametrize("size", [(64, 48), (512, 512)])
def test_masks_are_binary_of_the_image_size_and_repeatable(mode, size):
    masks = [make_mask(mode, np.random.RandomState(seed), *size) for seed in range(6)]
    assert all(m.shape == size and set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    assert sum(m.mean() for m in masks) > 0  # something is masked
    assert np.array_equal(masks[2], make_mask(mode, np.random.RandomState(2), *size))


def test_ranges_scale_only_below_the_nominal_size():
    assert scaled_settings("512train-large", 1024, 1024)["max_s_box"] == 450
    small = scaled_settings("512train-large", 128, 256)
    assert small["max_s_box"] == round(450 / 4) and small["max_n_box"] == 4 and small["scale"] == 0.25
