"""What --resume continues from (ldm/training/resume.py): the newest complete checkpoint of a run,
read safely; stale temporaries of killed saves removed; one process per run directory."""
import os
import re

import pytest
import torch

from ldm.training.config import ConfigError
from ldm.training.resume import (
    LOCK_NAME,
    RunDirectoryLock,
    check_steps_left,
    choose_resume_checkpoint,
    claim_run_directory,
    read_training_checkpoint,
    resume_point,
)
from ldm.util import CheckpointError
from tests.training.train_helpers import RunsCode, training_checkpoint


def test_the_newest_complete_checkpoint_wins_over_an_older_last_ckpt(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    training_checkpoint(ckpts / "last.ckpt", 10)
    newer = training_checkpoint(ckpts / "epoch=000000.ckpt", 20)
    training_checkpoint(ckpts / "trainstep_checkpoints" / "epoch=000000-step=000000030.ckpt", 30, weights_only=True)
    point = choose_resume_checkpoint(str(tmp_path), str(ckpts))
    assert (point.path, point.global_step) == (newer, 20)  # step 30 holds weights only: not resumable
    assert "last.ckpt is at step 10" in capsys.readouterr().out


def test_last_ckpt_wins_a_tie(tmp_path):
    ckpts = tmp_path / "checkpoints"
    training_checkpoint(ckpts / "epoch=000000.ckpt", 20)
    last = training_checkpoint(ckpts / "last.ckpt", 20)
    assert choose_resume_checkpoint(str(tmp_path), str(ckpts)).path == last


def test_a_truncated_or_hostile_last_ckpt_is_passed_over_for_a_complete_one(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    whole = training_checkpoint(ckpts / "epoch=000000.ckpt", 4)
    last = training_checkpoint(ckpts / "last.ckpt", 8)
    with open(last, "r+b") as handle:
        handle.truncate(os.path.getsize(last) // 2)
    assert choose_resume_checkpoint(str(tmp_path), str(ckpts)).path == whole
    out = capsys.readouterr().out
    assert f"Skipping {last}: cannot read checkpoint" in out and "last.ckpt cannot be used" in out
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.ones(1)}, "global_step": 9, "x": RunsCode(str(marker))}, last)
    assert choose_resume_checkpoint(str(tmp_path), str(ckpts)).path == whole
    assert not marker.exists()


def test_a_run_without_a_complete_checkpoint_is_one_config_error(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts).mkdir()
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 not really")
    training_checkpoint(ckpts / "weights.ckpt", 3, weights_only=True)
    with pytest.raises(ConfigError) as err:
        choose_resume_checkpoint(str(tmp_path), str(ckpts))
    message = str(err.value)
    assert "\n" not in message and "no complete checkpoint" in message
    assert "last.ckpt: cannot read checkpoint" in message and "weights.ckpt: weights only" in message


@pytest.mark.parametrize("content, error, message", [
    (b"", CheckpointError, "the file is empty"),
    (b"\x00" * 64, CheckpointError, "cannot read checkpoint"),
    ("weights", ConfigError, "holds weights only, not a training state .*model.params.ckpt_path="),
    ("hostile", CheckpointError, "not plain tensors"),
])
def test_a_named_checkpoint_that_cannot_be_resumed_is_one_line(tmp_path, content, error, message):
    path = tmp_path / "last.ckpt"
    marker = tmp_path / "ran"
    if content == "weights":
        training_checkpoint(path, 3, weights_only=True)
    elif content == "hostile":
        torch.save({"state_dict": {"w": torch.ones(1)}, "x": RunsCode(str(marker))}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(error, match=message) as err:
        resume_point(str(path))
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_training_checkpoint_is_read_whole(tmp_path):
    path = training_checkpoint(tmp_path / "last.ckpt", 7)
    checkpoint = read_training_checkpoint(path)
    assert checkpoint["global_step"] == 7 and torch.equal(checkpoint["state_dict"]["net.weight"], torch.full((2,), 7.))


def test_claiming_a_run_removes_temporaries_of_killed_saves_only(tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    stale = [ckpts / ".last.ckpt.k3j_x9a1.tmp", ckpts / ".epoch=000000.ckpt.abcdefgh.tmp"]
    keep = [ckpts / "last.ckpt", ckpts / "notes.tmp", tmp_path / "configs.tmp"]
    for path in stale + keep:
        path.write_bytes(b"x")
    lock = claim_run_directory(str(tmp_path), str(ckpts))
    try:
        assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
        assert "Removed 2 temporary file(s) of interrupted checkpoint saves" in capsys.readouterr().out
    finally:
        lock.release()


def test_a_run_directory_is_trained_by_one_process_at_a_time(tmp_path):
    first = claim_run_directory(str(tmp_path), str(tmp_path / "checkpoints"))
    try:
        with pytest.raises(ConfigError, match=rf"is being trained by another process \(pid {os.getpid()}\)"):
            RunDirectoryLock(str(tmp_path)).acquire()
    finally:
        first.release()
    second = RunDirectoryLock(str(tmp_path))
    second.acquire()  # free again once the first holder let go
    second.release()


def test_a_run_at_max_steps_has_nothing_to_train(tmp_path):
    point = resume_point(training_checkpoint(tmp_path / "last.ckpt", 50))
    with pytest.raises(ConfigError, match="nothing to train: .* is at step 50 and max_steps is 50; .*--max_steps 100"):
        check_steps_left(point, {"max_steps": 50})
    check_steps_left(point, {"max_steps": 51})
    check_steps_left(point, {"max_steps": -1})
    check_steps_left(point, {})


def test_a_run_directory_that_cannot_be_written_is_one_config_error(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()  # stands in for any reason the lock file cannot be opened
    with pytest.raises(ConfigError, match=rf"cannot train in {re.escape(str(tmp_path))}: Is a directory"):
        RunDirectoryLock(str(tmp_path)).acquire()
