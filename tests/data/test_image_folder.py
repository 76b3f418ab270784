"""CaptionedImageFolder: caption sources, resizing and cropping, output keys, clear errors."""
import json

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.image_folder import CaptionedImageFolder


def _save(path, width=20, height=12, value=None):
    rng = np.random.default_rng(len(str(path)))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if value is None else \
        np.full((height, width, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_sidecar_txt_files_give_the_captions(tmp_path):
    _save(tmp_path / "a.png")
    _save(tmp_path / "b.jpg")
    (tmp_path / "a.txt").write_text("a red circle\n")
    ds = CaptionedImageFolder(tmp_path, size=8)
    assert len(ds) == 2
    assert ds[0]["txt"] == ds[0]["caption"] == "a red circle"
    assert ds[1]["txt"] == ""  # no sidecar: the default caption


def test_examples_have_the_keys_configs_read_and_images_in_minus1_1(tmp_path):
    _save(tmp_path / "a.png", value=255)
    example = CaptionedImageFolder(tmp_path, size=8)[0]
    assert set(example) == {"image", "jpg", "txt", "caption", "file_path_"}
    assert example["image"] is example["jpg"]
    assert example["image"].shape == (8, 8, 3) and example["image"].dtype == np.float32
    assert np.allclose(example["image"], 1.0)


def test_shorter_side_is_resized_then_centre_cropped(tmp_path):
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)
    pixels[:, 2:6] = 255  # a white centre square in a 4x8 image
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = CaptionedImageFolder(tmp_path, size=4, interpolation="nearest")[0]["image"]
    assert image.shape == (4, 4, 3) and np.allclose(image, 1.0)


def test_random_crop_follows_numpy_seed_and_flip_mirrors(tmp_path):
    _save(tmp_path / "a.png", width=40, height=10)
    ds = CaptionedImageFolder(tmp_path, size=10, random_crop=True)
    np.random.seed(3)
    first = ds[0]["image"]
    np.random.seed(3)
    assert np.array_equal(ds[0]["image"], first)
    plain = CaptionedImageFolder(tmp_path, size=10)[0]["image"]
    flipped = CaptionedImageFolder(tmp_path, size=10, flip_p=1.0)[0]["image"]
    assert np.array_equal(flipped, plain[:, ::-1])


def test_csv_captions_file_lists_the_images(tmp_path):
    (tmp_path / "img").mkdir()
    _save(tmp_path / "img" / "x.png")
    _save(tmp_path / "img" / "unlisted.png")
    (tmp_path / "captions.csv").write_text('file_name,text\nimg/x.png,"blue, square"\n')
    ds = CaptionedImageFolder(tmp_path, size=8, captions="captions.csv")
    assert len(ds) == 1 and ds[0]["txt"] == "blue, square"


def test_metadata_jsonl_is_picked_up_automatically(tmp_path):
    _save(tmp_path / "y.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "y.png", "caption": "green"}) + "\n")
    assert CaptionedImageFolder(tmp_path, size=8)[0]["caption"] == "green"


def test_size_none_keeps_the_image_as_it_is(tmp_path):
    pixels = _save(tmp_path / "a.png", width=6, height=5)
    image = CaptionedImageFolder(tmp_path, size=None)[0]["image"]
    assert np.allclose(image, pixels / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize("setup, kwargs, message", [
    (lambda p: None, {}, "no images"),
    (lambda p: None, {"root_suffix": "missing"}, "image folder not found"),
    (lambda p: (p / "c.csv").write_text("file_name,text\nnope.png,x\n"), {"captions": "c.csv"},
     "lists 1 images missing"),
    (lambda p: (p / "c.csv").write_text("path_to,words\na.png,x\n"), {"captions": "c.csv"}, "no image file column"),
    (lambda p: (p / "c.jsonl").write_text("{not json\n"), {"captions": "c.jsonl"}, "not valid JSON"),
    (lambda p: None, {"captions": "absent.csv"}, "captions file not found"),
])
def test_bad_folders_and_caption_files_give_one_line_errors(tmp_path, setup, kwargs, message):
    setup(tmp_path)
    root = tmp_path / kwargs.pop("root_suffix", "")
    with pytest.raises(DatasetError, match=message) as info:
        CaptionedImageFolder(root, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [0, -3, "abc", True, 2.5])
def test_a_size_that_is_not_a_pixel_count_is_refused(tmp_path, size):
    _save(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"size must be a whole number of pixels >= 1 \(or null\)"):
        CaptionedImageFolder(tmp_path, size=size)


def test_a_file_that_is_not_an_image_is_named_when_read(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = CaptionedImageFolder(tmp_path, size=8)
    assert ds[0]["image"].shape == (8, 8, 3)
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.png \(.+\): remove or "
                                           r"replace it$"):
        ds[1]
