"""Atomic checkpoint writes: a failed write leaves the previous file intact and no debris."""
import os

import pytest
import torch

from ldm.training.checkpointing import AtomicCheckpointIO, atomic_torch_save


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"a": torch.ones(2)}, str(path))
    atomic_torch_save({"a": torch.zeros(2)}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_a_failed_write_keeps_the_old_checkpoint_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(5)}, str(path))
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": torch.tensor(6), "bad": Unpicklable()}, str(path))
    assert torch.load(path, weights_only=True)["step"].item() == 5
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_checkpoint_io_plugin_writes_atomically_into_new_folders(tmp_path):
    path = tmp_path / "checkpoints" / "epoch=000001.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}}, str(path))
    assert torch.load(path, weights_only=True)["state_dict"]["w"].item() == 1.0
    with pytest.raises(RuntimeError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"bad": Unpicklable()}, str(path))
    assert os.listdir(tmp_path / "checkpoints") == ["epoch=000001.ckpt"]
