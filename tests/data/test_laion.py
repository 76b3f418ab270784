"""The webdataset data module of the SD 2 configs without webdataset (one line), batching, and AddMask."""
import sys

import numpy as np
import pytest
import torch

from ldm.data.base import DatasetError
from ldm.data.laion import AddMask, WebDataModuleFromConfig, dict_collation_fn


def test_without_webdataset_the_data_module_is_one_line_naming_package_and_data(monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if not installed
    with pytest.raises(DatasetError) as err:
        WebDataModuleFromConfig(tar_base=None, batch_size=2, train={"shards": ["a.tar"]})
    message = str(err.value)
    assert "\n" not in message and "pip install webdataset" in message
    assert ".tar files of <key>.jpg + <key>.txt" in message


def test_add_mask_adds_a_binary_mask_and_blanks_the_image_under_it():
    torch.manual_seed(0)
    image = torch.rand(64, 64, 3) * 2 - 1
    sample = AddMask(mode="512train-large", p_drop=0.0)({"jpg": image})
    mask, masked = sample["mask"], sample["masked_image"]
    assert mask.shape == (64, 64, 1) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and 0 < mask.sum() < 64 * 64
    assert torch.equal(masked, image * (mask < 0.5))
    dropped = AddMask(mode="256train", p_drop=1.0)({"jpg": np.zeros((32, 32, 3), dtype=np.float32)})
    assert isinstance(dropped["mask"], np.ndarray) and dropped["mask"].min() == 1.0
    with pytest.raises(DatasetError, match="unknown mask generation mode 'huge'"):
        AddMask(mode="huge")


def test_dict_collation_stacks_tensors_and_lists_text():
    batch = dict_collation_fn([{"jpg": torch.zeros(2, 2, 3), "txt": "a", "n": 1, "only": 0},
                               {"jpg": torch.ones(2, 2, 3), "txt": "b", "n": 2}])
    assert set(batch) == {"jpg", "txt", "n"} and batch["jpg"].shape == (2, 2, 2, 3)
    assert batch["txt"] == ["a", "b"] and batch["n"].tolist() == [1, 2]
