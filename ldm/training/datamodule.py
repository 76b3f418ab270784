"""``main.DataModuleFromConfig``: datasets built from the ``data:`` section of a config."""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ldm.data.base import DatasetError, Txt2ImgIterableBaseDataset
from ldm.util import instantiate_from_config

SPLITS = ("train", "validation", "test", "predict")


class WrappedDataset(Dataset):
    """A torch Dataset over any object with ``__len__`` and ``__getitem__``."""

    def __init__(self, dataset):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


def worker_init_fn(_worker_id: int) -> None:
    """Give each dataloader worker its own share of a :class:`Txt2ImgIterableBaseDataset`'s
    records and its own numpy random stream (torch already seeds each worker differently)."""
    info = torch.utils.data.get_worker_info()
    dataset, worker_id = info.dataset, info.id
    if isinstance(dataset, Txt2ImgIterableBaseDataset):
        split_size = dataset.num_records // info.num_workers
        dataset.sample_ids = dataset.valid_ids[worker_id * split_size:(worker_id + 1) * split_size]
    np.random.seed(torch.initial_seed() % 2 ** 32)


class DataModuleFromConfig(pl.LightningDataModule):
    """Builds each split from its config (``train``, ``validation``, ``test``, ``predict``) and
    serves it with ``batch_size`` and ``num_workers`` (default 2 x batch_size). Training data is
    shuffled unless iterable; ``wrap`` wraps plain sequences in a torch Dataset."""

    def __init__(self, batch_size: int, train=None, validation=None, test=None, predict=None,
                 wrap: bool = False, num_workers: Optional[int] = None, shuffle_test_loader: bool = False,
                 use_worker_init_fn: bool = False, shuffle_val_dataloader: bool = False):
        super().__init__()
        for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise DatasetError(f"data.params.{name} must be a whole number >= {least}, got {value!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers if num_workers is not None else batch_size * 2
        self.use_worker_init_fn = use_worker_init_fn
        self.wrap = wrap
        self.dataset_configs = {name: cfg for name, cfg in zip(SPLITS, (train, validation, test, predict))
                                if cfg is not None}
        self.datasets: Dict[str, Dataset] = {}
        if train is not None:
            self.train_dataloader = self._train_dataloader
        if validation is not None:
            self.val_dataloader = partial(self._val_dataloader, shuffle=shuffle_val_dataloader)
        if test is not None:
            self.test_dataloader = partial(self._test_dataloader, shuffle=shuffle_test_loader)
        if predict is not None:
            self.predict_dataloader = self._predict_dataloader

    def prepare_data(self) -> None:
        """Build every dataset once (datasets that download or index data do it here)."""
        self._build()

    def setup(self, stage: Optional[str] = None) -> None:
        self._build()

    def _build(self) -> None:
        for name, cfg in self.dataset_configs.items():
            if name in self.datasets:
                continue
            dataset = instantiate_from_config(cfg)
            if not isinstance(dataset, torch.utils.data.IterableDataset) and len(dataset) == 0:
                raise DatasetError(f"the {name} dataset ({cfg['target']}) is empty")
            self.datasets[name] = WrappedDataset(dataset) if self.wrap else dataset

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        iterable = isinstance(dataset, Txt2ImgIterableBaseDataset)
        init_fn = worker_init_fn if (iterable or self.use_worker_init_fn) else None
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          shuffle=shuffle and not iterable, worker_init_fn=init_fn)

    def _train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _val_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("validation", shuffle=shuffle)

    def _test_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("test", shuffle=shuffle)

    def _predict_dataloader(self, shuffle: bool = False) -> DataLoader:
        return self._loader("predict", shuffle=shuffle)
