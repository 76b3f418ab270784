"""Base classes the original configs and ``main.worker_init_fn`` rely on."""
from __future__ import annotations

import os
from abc import abstractmethod
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset


class DatasetError(ValueError):
    """A dataset that cannot be built from its config (missing folder, no images, bad captions)."""


class Txt2ImgIterableBaseDataset(IterableDataset):
    """Streaming text-image dataset of ``num_records`` examples. ``valid_ids`` lists the record ids;
    :func:`ldm.training.datamodule.worker_init_fn` gives each dataloader worker its own share of
    them as ``sample_ids``, which ``__iter__`` of a subclass should walk."""

    def __init__(self, num_records: int = 0, valid_ids: Optional[Sequence[int]] = None, size: int = 256):
        super().__init__()
        self.num_records = num_records
        self.valid_ids = valid_ids
        self.sample_ids = valid_ids
        self.size = size
        print(f"{self.__class__.__name__} dataset contains {self.__len__()} examples.")

    def __len__(self) -> int:
        return self.num_records

    @abstractmethod
    def __iter__(self):
        ...


class PRNGMixin:
    """A ``prng`` property: a numpy RandomState of this process and dataloader worker, seeded from
    torch's seed for it (so each worker draws differently and a seeded run repeats), made anew
    in each new worker process."""

    @property
    def prng(self) -> np.random.RandomState:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.id)
        if getattr(self, "_prng_owner", None) != owner:
            self._prng = np.random.RandomState(torch.initial_seed() % 2 ** 32)
            self._prng_owner = owner
        return self._prng
