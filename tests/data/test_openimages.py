"""OpenImages super-resolution pairs from split folders under the data root."""
import os

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.openimages import SuperresOpenImagesAdvancedTrain, SuperresOpenImagesAdvancedValidation


def test_pairs_come_from_the_split_folder(tmp_path, monkeypatch):
    folder = tmp_path / "openimages" / "validation" / "part-0"
    os.makedirs(folder)
    Image.fromarray(np.full((20, 28, 3), 200, dtype=np.uint8)).save(folder / "0123456789abcdef.jpg")
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path))
    example = SuperresOpenImagesAdvancedValidation(size=16, degradation="bsrgan_light", downscale_f=4)[0]
    assert example["relpath"] == os.path.join("part-0", "0123456789abcdef.jpg")
    assert example["image"].shape == (16, 16, 3) and example["LR_image"].shape == (4, 4, 3)
    with pytest.raises(DatasetError) as err:
        SuperresOpenImagesAdvancedTrain(size=16, degradation="bsrgan_light")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"OpenImages train images not found: expected image files below "
                                     f"{os.path.join(str(tmp_path), 'openimages', 'train')}/")
