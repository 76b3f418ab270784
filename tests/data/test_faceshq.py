"""FFHQ and CelebA-HQ from the taming file lists (images and .npy arrays), ``keys``, the FacesHQ crops
with ``coord``, and the original ``taming.data.faceshq`` class paths resolving here."""
import os

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.faceshq import CelebAHQValidation, FacesHQTrain, FacesHQValidation, FFHQTrain, FFHQValidation
from ldm.util import instantiate_from_config


@pytest.fixture
def faces(tmp_path, monkeypatch):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    os.makedirs(root / "ffhq")
    os.makedirs(root / "celebahq")
    for split in ("train", "validation"):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "ffhq" / f"{split}.png")
        (root / f"ffhq{split}.txt").write_text(f"{split}.png\n")
        np.save(root / "celebahq" / f"{split}.npy", rng.integers(0, 256, (1, 3, 24, 24), dtype=np.uint8))
        (root / f"celebahq{split}.txt").write_text(f"{split}.npy\n")
    monkeypatch.setenv("LDM_DATA_ROOT", str(root))
    return root


def test_ffhq_and_celebahq_read_their_lists_images_and_arrays(faces):
    example = FFHQTrain(size=16)[0]
    assert set(example) == {"image", "file_path_"} and example["image"].shape == (16, 16, 3)
    array = np.load(faces / "celebahq" / "validation.npy")[0].transpose(1, 2, 0)
    np.testing.assert_allclose(CelebAHQValidation(size=None)[0]["image"], array / 127.5 - 1.0, atol=1e-6)
    assert set(FFHQValidation(size=16, keys=["image"])[0]) == {"image"}


def test_the_original_taming_class_paths_build_these_datasets(faces):
    dataset = instantiate_from_config({"target": "taming.data.faceshq.FFHQValidation", "params": {"size": 8}})
    assert isinstance(dataset, FFHQValidation) and dataset[0]["image"].shape == (8, 8, 3)


def test_faceshq_concatenates_celebahq_then_ffhq_and_crops_with_coordinates(faces):
    dataset = FacesHQTrain(size=16, crop_size=8, coord=True)
    assert len(dataset) == 2 and [dataset[i]["class"] for i in range(2)] == [0, 1]
    example = dataset[1]
    assert example["image"].shape == (8, 8, 3) and example["coord"].shape == (8, 8, 1)
    top_left = example["coord"][0, 0, 0] * 256  # raster position in the 16 x 16 image
    row, col = divmod(round(top_left), 16)
    np.testing.assert_allclose(example["image"], FFHQTrain(size=16)[0]["image"][row:row + 8, col:col + 8])
    centre = FacesHQValidation(size=16, crop_size=8)[0]
    assert "coord" not in centre and centre["image"].shape == (8, 8, 3)


def test_a_missing_file_list_is_one_line_naming_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        FFHQTrain(size=8)
    message = str(err.value)
    assert "\n" not in message and "ffhqtrain.txt not found: expected" in message
    assert f"expected a text file of image paths relative to {os.path.join(str(tmp_path), 'ffhq')}/" in message
