"""Txt2ImgIterableBaseDataset and the worker split done by worker_init_fn."""
from types import SimpleNamespace

import numpy as np
import torch

from ldm.data.base import Txt2ImgIterableBaseDataset
from ldm.training.datamodule import worker_init_fn


class Records(Txt2ImgIterableBaseDataset):
    def __iter__(self):
        yield from self.sample_ids


def test_iterable_base_reports_its_record_count():
    ds = Records(num_records=10, valid_ids=list(range(10)), size=64)
    assert len(ds) == 10 and ds.size == 64 and ds.sample_ids == list(range(10))


def test_worker_init_fn_gives_each_worker_its_own_share(monkeypatch):
    shares = []
    for worker_id in range(3):
        ds = Records(num_records=9, valid_ids=list(range(9)))
        info = SimpleNamespace(dataset=ds, id=worker_id, num_workers=3)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        worker_init_fn(worker_id)
        shares.append(list(ds))
    assert shares == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_worker_init_fn_seeds_numpy_from_the_worker_torch_seed(monkeypatch):
    info = SimpleNamespace(dataset=[1, 2], id=0, num_workers=1)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    draws = []
    for seed in (5, 6, 5):
        torch.manual_seed(seed)
        worker_init_fn(0)
        draws.append(np.random.rand())
    assert draws[0] == draws[2] != draws[1]


def test_prng_is_one_generator_per_process_seeded_from_torch():
    from ldm.data.base import PRNGMixin

    class Draws(PRNGMixin):
        pass

    torch.manual_seed(5)
    first = Draws()
    assert first.prng is first.prng
    values = first.prng.rand(3)
    torch.manual_seed(5)
    assert np.array_equal(Draws().prng.rand(3), values)
