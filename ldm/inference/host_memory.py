"""Handing freed host memory back to the operating system before a memory-heavy step.

glibc keeps the heap pages that freed tensors occupied: after a CPU sampling loop a few hundred MiB
of them stay resident, and the decoder's full-resolution activations are then allocated on top.
``malloc_trim(0)`` returns every whole free page, which lowers the peak resident memory of a
512x512 CPU txt2img run by about 70 MiB on average, 30-170 MiB in single runs (docs/PERFORMANCE.md).
Where glibc is not the allocator (macOS, Windows, musl) there is nothing to call and nothing happens.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable, Optional


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_host_memory() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim``); False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
