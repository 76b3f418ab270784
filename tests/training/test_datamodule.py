"""DataModuleFromConfig: splits from configs, loaders, wrapping, empty data refused."""
import re

import pytest
import torch
from omegaconf import OmegaConf

from ldm.data.base import DatasetError, Txt2ImgIterableBaseDataset
from ldm.training.datamodule import DataModuleFromConfig, WrappedDataset, worker_init_fn


class Numbers:
    """A plain sequence (not a torch Dataset) of n items."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor(float(i))}


class Stream(Txt2ImgIterableBaseDataset):
    def __iter__(self):
        for i in self.sample_ids:
            yield {"x": torch.tensor(float(i))}


def _cfg(target, **params):
    return OmegaConf.create({"target": f"{__name__}.{target}", "params": params})


def test_splits_get_loaders_with_batch_size_and_default_workers():
    dm = DataModuleFromConfig(batch_size=3, train=_cfg("Numbers", n=7), validation=_cfg("Numbers", n=4), wrap=True)
    assert dm.num_workers == 6
    dm.num_workers = 0
    dm.setup()
    assert isinstance(dm.datasets["train"], WrappedDataset)
    train = dm.train_dataloader()
    assert train.batch_size == 3 and isinstance(train.sampler, torch.utils.data.RandomSampler)
    val = dm.val_dataloader()
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert [b["x"].tolist() for b in val] == [[0.0, 1.0, 2.0], [3.0]]
    assert not hasattr(dm, "test_dataloader") or "test" not in dm.dataset_configs


def test_datasets_are_built_once_across_prepare_and_setup(monkeypatch):
    built = []
    dm = DataModuleFromConfig(batch_size=1, train=_cfg("Numbers", n=2), num_workers=0)
    monkeypatch.setattr(Numbers, "__init__", lambda self, n: (built.append(n), setattr(self, "n", n))[0])
    dm.prepare_data()
    dm.setup("fit")
    assert built == [2]


def test_iterable_datasets_are_not_shuffled_and_use_worker_init_fn():
    dm = DataModuleFromConfig(batch_size=2, train=_cfg("Stream", num_records=4, valid_ids=[0, 1, 2, 3]),
                              num_workers=0)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.worker_init_fn is worker_init_fn
    assert [b["x"].tolist() for b in loader] == [[0.0, 1.0], [2.0, 3.0]]


def test_an_empty_dataset_is_refused():
    dm = DataModuleFromConfig(batch_size=1, train=_cfg("Numbers", n=0), num_workers=0)
    with pytest.raises(DatasetError, match="the train dataset .* is empty"):
        dm.setup()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": "abc"}, "batch_size must be a whole number >= 1, got 'abc'"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
    ({"batch_size": 2, "num_workers": -1}, "num_workers must be a whole number >= 0, got -1"),
    ({"batch_size": 2, "num_workers": 1.5}, "num_workers must be a whole number >= 0, got 1.5"),
])
def test_batch_size_and_workers_of_the_wrong_kind_are_refused_when_built(kwargs, message):
    with pytest.raises(DatasetError, match=re.escape(message)):
        DataModuleFromConfig(**kwargs)
