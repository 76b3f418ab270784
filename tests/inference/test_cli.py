import argparse

import pytest
import torch

from ldm.inference.cli import run_script
from ldm.inference.errors import UsageError
from ldm.util import CheckpointError


def _run(error, capsys):
    def main(opt):
        raise error

    with pytest.raises(SystemExit) as stop:
        run_script(argparse.ArgumentParser(prog="demo.py"), main, [])
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("error", [UsageError("--strength must be in [0, 1], got 2"),
                                   CheckpointError("checkpoint not found: x.ckpt")])
def test_user_errors_are_one_line_on_stderr_with_exit_code_2(error, capsys):
    code, err = _run(error, capsys)
    assert code == 2
    assert err == f"demo.py: error: {error}\n"


def test_multi_line_messages_are_joined_into_one_line(capsys):
    _, err = _run(UsageError("first\nsecond"), capsys)
    assert err == "demo.py: error: first second\n"


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_on_any_device_gets_advice(error, capsys):
    code, err = _run(error, capsys)
    assert code == 2
    assert err.startswith("demo.py: error: out of memory: try --n_samples 1")


def test_other_errors_are_not_hidden():
    def main(opt):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_script(argparse.ArgumentParser(prog="demo.py"), main, [])
