"""LSUN: the originals' file lists under the data root, score-sde's centre crop, flips, one-line
errors for a missing list or a list that points elsewhere."""
import os

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.lsun import LSUNBase, LSUNChurchesTrain, LSUNChurchesValidation


@pytest.fixture
def churches(tmp_path, monkeypatch):
    root = tmp_path / "data" / "lsun"
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[:, :15] = 255  # left half white: a flip is visible
    os.makedirs(root / "churches" / "a")
    Image.fromarray(image).save(root / "churches" / "a" / "0.png")
    for split in ("train", "val"):
        (root / f"church_outdoor_{split}.txt").write_text("a/0.png\n\n")
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path / "data"))
    return root


def test_examples_are_the_resized_centre_square_with_their_paths(churches):
    example = LSUNChurchesValidation(size=10)[0]
    assert set(example) == {"image", "relative_file_path_", "file_path_"}
    assert example["relative_file_path_"] == "a/0.png"
    assert example["file_path_"] == os.path.join(str(churches / "churches"), "a/0.png")
    image = np.asarray(Image.open(churches / "churches" / "a" / "0.png"))[:, 5:25]
    expected = np.asarray(Image.fromarray(image).resize((10, 10), Image.Resampling.BICUBIC)) / 127.5 - 1.0
    np.testing.assert_allclose(example["image"], expected, atol=1e-6)


def test_training_flips_with_flip_p_and_validation_does_not(churches):
    flipped = LSUNChurchesTrain(size=10, flip_p=1.0)[0]["image"]
    plain = LSUNChurchesValidation(size=10)[0]["image"]
    np.testing.assert_array_equal(flipped, plain[:, ::-1])
    assert LSUNChurchesTrain(size=10).flip_p == 0.5 and LSUNChurchesValidation().flip_p == 0.0


def test_a_missing_file_list_or_image_root_is_one_line(churches, tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as err:
        LSUNBase(txt_file=str(tmp_path / "none.txt"), data_root=str(tmp_path))
    assert "\n" not in str(err.value) and "LSUN file list" in str(err.value)
    assert "expected a text file of image paths relative to" in str(err.value)
    with pytest.raises(DatasetError, match=r"LSUN image .*a/0.png \(the first one .*church_outdoor_val.txt names\) not "
                                           r"found: expected the files it lists under .*elsewhere/"):
        LSUNBase(txt_file=str(churches / "church_outdoor_val.txt"), data_root=str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(DatasetError, match=r"church_outdoor_train.txt not found: expected .*\(LDM_DATA_ROOT is"):
        LSUNChurchesTrain(size=8)
    with pytest.raises(DatasetError, match="interpolation must be one of"):
        LSUNBase(txt_file="x", data_root="y", interpolation="cubic")
