import pytest
import torch

from ldm.inference.errors import UsageError
from ldm.inference.precision import autocast_dtype, precision_scope


def test_autocast_on_cpu_stays_fp32_unless_bf16_is_asked_for():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "autocast", bf16=False) is None
    assert autocast_dtype(cpu, "autocast", bf16=True) is torch.bfloat16


def test_full_precision_is_fp32_and_refuses_bf16():
    assert autocast_dtype(torch.device("cpu"), "full", bf16=False) is None
    with pytest.raises(UsageError, match="--bf16 needs --precision autocast"):
        autocast_dtype(torch.device("cpu"), "full", bf16=True)


def test_bf16_scope_runs_matmuls_in_bf16_on_cpu():
    with precision_scope(torch.device("cpu"), torch.bfloat16):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.bfloat16
    with precision_scope(torch.device("cpu"), None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
