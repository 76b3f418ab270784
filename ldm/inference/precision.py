"""Numeric precision of a run: ``torch.autocast`` on the model's device, never a hard-coded one.

``--precision autocast`` (the originals' default) means fp16 autocast on CUDA and MPS, bf16 with
``--bf16``; on CPU it runs in fp32 unless ``--bf16`` asks for bf16 autocast, because fp16
autocast is not supported on CPU and bf16 changes the images. ``--precision full`` is fp32.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from ldm.inference.errors import UsageError


def autocast_dtype(device: torch.device, precision: str, bf16: bool) -> Optional[torch.dtype]:
    """The autocast dtype for this device and these flags, or None for plain fp32."""
    if precision == "full":
        if bf16:
            raise UsageError("--bf16 needs --precision autocast (it selects the autocast dtype)")
        return None
    if bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--bf16 was asked for, but this CUDA device does not support bfloat16")
        return torch.bfloat16
    if device.type in ("cuda", "mps"):
        return torch.float16
    return None


def precision_scope(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

