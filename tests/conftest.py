"""Suite-wide settings: no network, few threads, deterministic seeds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The same numbers on every machine: --precision autocast is fp32 on a CPU unless a test says otherwise
# (it is bf16 where the CPU computes in bfloat16 natively; tests/inference/test_precision.py).
os.environ.setdefault("LDM_CPU_BF16", "0")

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight models (txt2img, inpaint, depth, upscale) saved as config + checkpoint,
    built once per test run (tests/scripts/helpers.py)."""
    from tests.scripts.helpers import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_unclip_models(tmp_path_factory):
    """The unCLIP-L and -H inference configs at toy size with random weights, saved as config +
    checkpoint once per test run (tests/scripts/helpers.py)."""
    from tests.scripts.helpers import build_tiny_unclip_models

    return build_tiny_unclip_models(tmp_path_factory.mktemp("tiny_unclip_models"))


@pytest.fixture(scope="session")
def tiny_sampling_models(tmp_path_factory):
    """Tiny random-weight models without a prompt (pixel DDPM, unconditional LDM, class-conditional
    LDM) saved as config + checkpoint, built once per test run (tests/scripts/helpers.py)."""
    from tests.scripts.helpers import build_tiny_sampling_models

    return build_tiny_sampling_models(tmp_path_factory.mktemp("tiny_sampling_models"))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
