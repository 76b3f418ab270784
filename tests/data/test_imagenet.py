"""ImageNet from a local folder: the usual layout and the original's cache layout, labels in sorted
synset order, human labels from a local file, sub_indices, and ImageNetSR pairs with the original's
HR index file read without running it."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from ldm.data.base import DatasetError
from ldm.data.imagenet import (
    ImageNetSRTrain,
    ImageNetSRValidation,
    ImageNetTrain,
    ImageNetValidation,
    str_to_indices,
)

SYNSETS = ("n01443537", "n01440764", "n01484850")  # made out of order: labels follow sorted order


def make_split(folder, synsets=SYNSETS, per_class=2, size=(30, 40)):
    rng = np.random.default_rng(0)
    for synset in synsets:
        os.makedirs(folder / synset, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / synset / f"{synset}_{i}.JPEG")


@pytest.fixture
def imagenet(tmp_path, monkeypatch):
    root = tmp_path / "data" / "imagenet"
    make_split(root / "train")
    make_split(root / "val", per_class=1)
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path / "data"))
    return root


def test_examples_carry_the_original_keys_and_labels_in_sorted_synset_order(imagenet):
    dataset = ImageNetTrain(config={"size": 16})
    assert len(dataset) == 6
    example = dataset[0]
    assert set(example) == {"image", "relpath", "synsets", "class_label", "human_label", "file_path_"}
    assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.float32
    assert -1.0 <= example["image"].min() and example["image"].max() <= 1.0
    labels = {dataset[i]["synsets"]: dataset[i]["class_label"] for i in range(len(dataset))}
    assert labels == {"n01440764": 0, "n01443537": 1, "n01484850": 2}
    assert example["human_label"] == example["synsets"]  # no synset_human.txt
    assert example["file_path_"] == os.path.join(str(imagenet / "train"), example["relpath"])


def test_validation_crops_the_centre_and_training_crops_at_random(imagenet):
    validation = ImageNetValidation(config={"size": 16})
    assert len(validation) == 3 and validation.random_crop is False
    assert np.array_equal(validation[1]["image"], validation[1]["image"])
    train = ImageNetTrain(config={"size": 16})
    assert train.random_crop is True
    np.random.seed(0)
    crops = {train[0]["image"].tobytes() for _ in range(8)}
    assert len(crops) > 1
    assert ImageNetTrain(config={"size": 16, "ImageNetTrain": {"random_crop": False}}).random_crop is False


def test_human_labels_come_from_a_local_synset_file(imagenet):
    (imagenet / "synset_human.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    dataset = ImageNetValidation(config={"size": 8})
    names = {dataset[i]["synsets"]: dataset[i]["human_label"] for i in range(3)}
    assert names == {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
                     "n01484850": "n01484850"}


def test_data_root_parameter_and_the_original_cache_layout_are_read(tmp_path, monkeypatch):
    make_split(tmp_path / "mine" / "train", synsets=("n01440764",), per_class=1)
    assert len(ImageNetTrain(data_root=str(tmp_path / "mine"))) == 1
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_split(tmp_path / "cache" / "autoencoders" / "data" / "ILSVRC2012_validation" / "data", per_class=1)
    dataset = ImageNetValidation(config={"size": 8})
    assert len(dataset) == 3 and dataset.root.endswith("ILSVRC2012_validation")


def test_a_missing_folder_is_one_line_naming_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DatasetError) as err:
        ImageNetTrain()
    message = str(err.value)
    assert "\n" not in message and message.startswith("ImageNet train images not found: expected ")
    assert os.path.join(str(tmp_path), "imagenet", "train", "<synset>", "*.JPEG") in message
    assert "LDM_DATA_ROOT" in message and "docs/DATA.md" in message
    os.makedirs(tmp_path / "imagenet" / "train" / "n01440764")
    with pytest.raises(DatasetError, match="no ImageNet images .* in the synset folders of"):
        ImageNetTrain()


def test_sub_indices_keep_some_classes_and_relabel_them(imagenet):
    assert str_to_indices("0-2,5") == [0, 1, 5]
    dataset = ImageNetTrain(config={"size": 8, "sub_indices": "1-3"})
    assert sorted({dataset[i]["synsets"] for i in range(len(dataset))}) == ["n01443537", "n01484850"]
    assert sorted({dataset[i]["class_label"] for i in range(len(dataset))}) == [0, 1]
    (imagenet / "index_synset.yaml").write_text("0: n01484850\n1: n01440764\n2: n01443537\n")
    kept = ImageNetTrain(config={"size": 8, "sub_indices": "0", "keep_orig_class_label": True})
    assert {(e["synsets"], e["class_label"]) for e in (kept[0], kept[1])} == {("n01484850", 0)}
    with pytest.raises(DatasetError, match="sub_indices must look like"):
        str_to_indices("a-b")


def test_process_images_false_gives_labels_and_paths_only(imagenet):
    example = ImageNetTrain(process_images=False)[0]
    assert "image" not in example and os.path.isfile(example["file_path_"])


@pytest.mark.parametrize("degradation", ["pil_nearest", "cv_bicubic", "bsrgan_light"])
def test_superres_pairs_have_the_sizes_of_size_and_downscale_f(imagenet, degradation):
    dataset = ImageNetSRTrain(size=16, degradation=degradation, downscale_f=4)
    example = dataset[2]
    assert example["image"].shape == (16, 16, 3) and example["LR_image"].shape == (4, 4, 3)
    assert example["LR_image"].dtype == np.float32 and example["class_label"] in (0, 1, 2)
    assert len(ImageNetSRValidation(size=16, degradation=degradation)) == 3


def test_superres_uses_the_hr_index_file_and_refuses_one_that_runs_code(imagenet, tmp_path):
    with open(tmp_path / "data" / "imagenet_train_hr_indices.p", "wb") as handle:
        pickle.dump([4, 1], handle)
    dataset = ImageNetSRTrain(size=8, degradation="pil_bicubic")
    assert len(dataset) == 2 and dataset[0]["relpath"] == ImageNetTrain(process_images=False)[4]["relpath"]
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(tmp_path / "data" / "imagenet_train_hr_indices.p", "wb") as handle:
        pickle.dump([RunsCode()], handle)
    with pytest.raises(DatasetError, match="is not a pickled list of image indices"):
        ImageNetSRTrain(size=8, degradation="pil_bicubic")
    assert not marker.exists()
    with open(tmp_path / "data" / "imagenet_train_hr_indices.p", "wb") as handle:
        pickle.dump([0, 99], handle)
    with pytest.raises(DatasetError, match="names image 99 of a split of 6 images"):
        ImageNetSRTrain(size=8, degradation="pil_bicubic")
