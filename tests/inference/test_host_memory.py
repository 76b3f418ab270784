"""ldm/inference/host_memory.py: freed heap memory goes back to the OS on glibc systems, and the
decoder helper asks for it on CPU."""
import sys

import pytest
import torch

from ldm.inference import host_memory, pipeline, tasks


def _resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2 ** 20


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._malloc_trim() is None,
                    reason="malloc_trim is glibc's; elsewhere release_free_host_memory is a no-op")
def test_freed_heap_memory_returns_to_the_os():
    # 64 KiB tensors come from the heap (below glibc's mmap threshold); the last one keeps the top
    # of the heap in use, so glibc's own trimming at free() cannot return the rest.
    tensors = [torch.ones(16 * 1024) for _ in range(3200)]  # 200 MiB, pages touched
    pin = torch.ones(16 * 1024)
    del tensors
    before = _resident_mib()
    assert host_memory.release_free_host_memory()
    assert before - _resident_mib() > 100
    del pin


def test_without_malloc_trim_nothing_is_called_and_false_is_returned(monkeypatch):
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)
    assert host_memory.release_free_host_memory() is False


@pytest.mark.parametrize("device, calls", [("cpu", 1), ("meta", 0)])
def test_a_task_decoding_on_cpu_releases_free_memory_first(monkeypatch, device, calls):
    seen = []
    monkeypatch.setattr(tasks, "release_free_host_memory", lambda: seen.append("release"))

    class Decoder(torch.nn.Module):
        def decode_first_stage(self, z):
            seen.append("decode")
            return torch.zeros(1, 3, 8, 8)

    tasks.Task._decode(Decoder(), torch.zeros(1, 4, 1, 1, device=device))
    assert seen == ["release"] * calls + ["decode"]


def test_decode_latents_itself_has_no_memory_side_effect(monkeypatch):
    monkeypatch.setattr(host_memory, "release_free_host_memory", lambda: pytest.fail("decode_latents released memory"))

    class Decoder(torch.nn.Module):
        def decode_first_stage(self, z):
            return torch.zeros(1, 3, 8, 8)

    assert pipeline.decode_latents(Decoder(), torch.zeros(1, 4, 1, 1)).shape == (1, 3, 8, 8)
