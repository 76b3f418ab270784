"""The helpers behind the original layouts: the data root, file lists, reading images and arrays,
albumentations-style resizing and cropping, ImagePaths and ConcatDatasetWithIndex."""
import os

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.image_paths import (
    ConcatDatasetWithIndex,
    ImagePaths,
    crop,
    data_root,
    read_file_list,
    read_rgb,
    smallest_max_size,
)


def test_the_data_root_is_the_env_var_else_data(monkeypatch):
    monkeypatch.delenv("LDM_DATA_ROOT", raising=False)
    assert data_root() == "data"
    monkeypatch.setenv("LDM_DATA_ROOT", "/srv/datasets")
    assert data_root() == "/srv/datasets"


def test_file_lists_skip_blank_lines_and_name_the_layout_when_missing_or_empty(tmp_path):
    (tmp_path / "list.txt").write_text("a.png\n\n b.png \n")
    assert read_file_list(str(tmp_path / "list.txt"), "X", "L") == ["a.png", "b.png"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"X file list .*empty.txt names no images \(expected L"):
        read_file_list(str(tmp_path / "empty.txt"), "X", "L")
    with pytest.raises(DatasetError, match=r"X file list .*none.txt not found: expected L \(LDM_DATA_ROOT is"):
        read_file_list(str(tmp_path / "none.txt"), "X", "L")


@pytest.mark.parametrize("shape, layout", [((1, 3, 4, 5), "nchw"), ((3, 4, 5), "chw"), ((4, 5, 3), "hwc")])
def test_arrays_are_read_in_any_of_the_original_layouts(tmp_path, shape, layout):
    hwc = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    array = {"nchw": hwc.transpose(2, 0, 1)[None], "chw": hwc.transpose(2, 0, 1), "hwc": hwc}[layout]
    np.save(tmp_path / "a.npy", array)
    assert np.array_equal(read_rgb(str(tmp_path / "a.npy")), hwc)


def test_unreadable_files_are_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad.png \(.*\): remove or replace it"):
        read_rgb(str(tmp_path / "bad.png"))
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(DatasetError, match="holds a float32 array"):
        read_rgb(str(tmp_path / "f.npy"))


def test_smallest_max_size_rounds_half_to_even_and_crops_are_centred():
    image = np.zeros((10, 25, 3), dtype=np.uint8)
    assert smallest_max_size(image, 4).shape == (4, 10, 3)  # 25 * 0.4 = 10
    assert smallest_max_size(np.zeros((4, 10, 3), dtype=np.uint8), 5).shape == (5, 12, 3)  # 12.5 -> 12
    grid = np.arange(30).reshape(5, 6, 1)
    assert np.array_equal(crop(grid, 3, 3, random_crop=False), grid[1:4, 1:4])
    with pytest.raises(DatasetError, match="cannot crop 6x6 from an image of 5x6"):
        crop(grid, 6, 6, random_crop=True)


def test_image_paths_give_squares_and_labels_and_concat_tells_the_part(tmp_path):
    Image.fromarray(np.zeros((8, 12, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    paths = ImagePaths([str(tmp_path / "a.png")], size=6, labels={"id": ["x"]})
    example = paths[0]
    assert example["image"].shape == (6, 6, 3) and example["id"] == "x" and example["image"].min() == -1.0
    both = ConcatDatasetWithIndex([paths, ImagePaths([os.path.join(str(tmp_path), "a.png")])])
    assert both[1][1] == 1 and both[1][0]["image"].shape == (8, 12, 3) and both[-2][1] == 0
