"""Run directories: original naming, never reused, --resume from a run or a checkpoint in it."""
import argparse
import os
import re

import pytest

from ldm.training.config import ConfigError
from ldm.training.logdir import RUN_DIR_ENV, RUN_NOW_ENV, published_for_other_ranks, resolve_run_paths


def _opt(tmp_path, **kwargs):
    values = dict(name="", resume="", base=[], postfix="", logdir=str(tmp_path / "logs"))
    values.update(kwargs)
    return argparse.Namespace(**values)


def test_new_run_is_named_after_time_and_first_base_config(tmp_path):
    paths = resolve_run_paths(_opt(tmp_path, base=["configs/x/tiny-ae.yaml", "b.yaml"], postfix="-v2"), True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d_tiny-ae-v2", paths.nowname)
    assert paths.ckptdir == os.path.join(paths.logdir, "checkpoints")
    assert paths.cfgdir == os.path.join(paths.logdir, "configs")
    assert not os.path.exists(paths.logdir)  # planning writes nothing
    named = resolve_run_paths(_opt(tmp_path, name="exp", base=["a.yaml"]), True, now="NOW")
    assert named.nowname == "NOW_exp"


def test_a_new_run_never_reuses_an_existing_directory(tmp_path):
    opt = _opt(tmp_path, name="same")
    first = resolve_run_paths(opt, True, create=True, now="T")
    (tmp_path / "logs" / "T_same" / "precious.txt").write_text("keep")
    second = resolve_run_paths(opt, True, create=True, now="T")
    assert first.logdir != second.logdir and second.nowname == "T_same_1"
    assert (tmp_path / "logs" / "T_same" / "precious.txt").read_text() == "keep"


def _make_run(tmp_path):
    run = tmp_path / "logs" / "T_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "configs").mkdir()
    (run / "configs" / "T-project.yaml").write_text("model: {}\n")
    (run / "configs" / "T-lightning.yaml").write_text("lightning: {}\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return run


def test_resume_from_a_run_directory_uses_its_configs_and_leaves_the_checkpoint_to_choose(tmp_path):
    run = _make_run(tmp_path)
    paths = resolve_run_paths(_opt(tmp_path, resume=str(run)), True)
    assert paths.logdir == str(run) and paths.nowname == "T_run"
    assert paths.resuming and paths.resume_ckpt is None  # choose_resume_checkpoint reads the files
    assert [os.path.basename(p) for p in paths.resume_configs] == ["T-lightning.yaml", "T-project.yaml"]


def test_resume_from_a_checkpoint_file_finds_its_run_even_in_a_subfolder(tmp_path):
    run = _make_run(tmp_path)
    nested = run / "checkpoints" / "trainstep_checkpoints"
    nested.mkdir()
    (nested / "step.ckpt").write_bytes(b"x")
    paths = resolve_run_paths(_opt(tmp_path, resume=str(nested / "step.ckpt")), True)
    assert os.path.abspath(paths.logdir) == str(run) and paths.resume_ckpt == str(nested / "step.ckpt")


@pytest.mark.parametrize("kwargs, message", [
    ({"resume": "nowhere"}, "does not exist"),
    ({"resume": "RUN", "name": "x"}, "cannot be given together"),
])
def test_bad_resume_requests_are_config_errors(tmp_path, kwargs, message):
    run = _make_run(tmp_path)
    kwargs = {k: (str(run) if v == "RUN" else str(tmp_path / v) if k == "resume" else v) for k, v in kwargs.items()}
    with pytest.raises(ConfigError, match=message):
        resolve_run_paths(_opt(tmp_path, **kwargs), True)


def test_resume_needs_a_checkpoint_in_the_run_or_a_checkpoint_inside_a_run(tmp_path):
    run = _make_run(tmp_path)
    os.remove(run / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"has no checkpoints \(checkpoints/\*.ckpt\)"):
        resolve_run_paths(_opt(tmp_path, resume=str(run)), True)
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"x")
    with pytest.raises(ConfigError, match="not inside a run directory"):
        resolve_run_paths(_opt(tmp_path, resume=str(loose)), True)


def test_other_ranks_use_the_directory_rank_zero_published(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv(RUN_NOW_ENV, raising=False)
    rank0 = resolve_run_paths(_opt(tmp_path, name="ddp"), True, create=True)
    with published_for_other_ranks(rank0):
        rank1 = resolve_run_paths(_opt(tmp_path, name="ddp"), False, create=True)
    assert os.path.abspath(rank1.logdir) == os.path.abspath(rank0.logdir) and rank1.now == rank0.now
    assert len(os.listdir(tmp_path / "logs")) == 1
    assert RUN_DIR_ENV not in os.environ and RUN_NOW_ENV not in os.environ


def test_resume_from_the_folder_of_runs_names_the_newest_run(tmp_path):
    _make_run(tmp_path)
    newer = tmp_path / "logs" / "U_run" / "checkpoints"
    newer.mkdir(parents=True)
    (newer / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"it holds runs, not a run's checkpoints; give one, e.g. the newest: "
                                          rf"--resume {re.escape(str(tmp_path / 'logs' / 'U_run'))}$"):
        resolve_run_paths(_opt(tmp_path, resume=str(tmp_path / "logs")), True)


def test_a_logdir_that_cannot_hold_runs_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"--logdir .*afile/logs: .*afile is a file, not a folder"):
        resolve_run_paths(_opt(tmp_path, logdir=str(tmp_path / "afile" / "logs")), True)
    with pytest.raises(ConfigError, match=r"--logdir /proc/ldm-logs: cannot create /proc/ldm-logs/T_x"):
        resolve_run_paths(_opt(tmp_path, logdir="/proc/ldm-logs", name="x"), True, create=True, now="T")
