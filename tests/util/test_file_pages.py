"""ldm/util/file_pages.py: the pages of a tensor memory-mapped from a checkpoint are given back
without changing its values; memory that is not a mapping of the file is never touched."""
import os

import pytest
import torch

from ldm.util import load_checkpoint, save_checkpoint
from ldm.util.file_pages import FileMappedPages

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the process's memory map (Linux)")
MIB = 1 << 20


def _resident_file_pages_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:"))


def _saved_ckpt(folder, tensors):
    folder.mkdir(exist_ok=True)
    path = folder / "w.ckpt"
    save_checkpoint(tensors, path)
    return str(path)


def test_a_memory_mapped_tensor_gives_its_pages_back_and_keeps_its_values(tmp_path):
    weights = {"big": torch.randn(MIB), "small": torch.arange(5.0)}
    path = _saved_ckpt(tmp_path, weights)
    loaded = torch.load(path, mmap=True, weights_only=True)["state_dict"]
    pages = FileMappedPages(path)
    before = _resident_file_pages_kib()
    assert torch.equal(loaded["big"], weights["big"])  # reads its 4 MiB
    read = _resident_file_pages_kib()
    assert pages.give_back(loaded["big"])
    after = _resident_file_pages_kib()
    assert read - before > 3 * 1024 and read - after > 3 * 1024, (before, read, after)
    assert torch.equal(loaded["big"], weights["big"]) and torch.equal(loaded["small"], weights["small"])


def test_memory_that_is_not_a_mapping_of_the_file_is_left_alone(tmp_path):
    path = _saved_ckpt(tmp_path, {"w": torch.ones(3)})
    pages = FileMappedPages(path)
    anonymous = torch.randn(MIB // 4)
    copy = anonymous.clone()
    assert not pages.give_back(anonymous)
    assert torch.equal(anonymous, copy)
    other = torch.load(_saved_ckpt(tmp_path / "other", {"w": torch.randn(1024)}), mmap=True, weights_only=True)
    assert not pages.give_back(other["state_dict"]["w"]), "a mapping of another file"


def test_a_checked_ckpt_keeps_none_of_its_tensors_resident_and_their_values(tmp_path):
    weights = {f"w{i}": torch.randn(MIB // 4) for i in range(4)}
    path = _saved_ckpt(tmp_path, weights)
    before = _resident_file_pages_kib()
    loaded, _ = load_checkpoint(path)  # the NaN/inf check reads every tensor
    assert _resident_file_pages_kib() - before < 1024, "the check left the file's pages resident"
    for key, value in weights.items():
        assert torch.equal(loaded[key], value), key
