"""Device choice: the requested device, or the best one this machine has (no hard-coded "cuda")."""
from __future__ import annotations

from typing import Optional

import torch

_DEVICE_PREFERENCE = ("cuda", "mps", "cpu")


def _device_available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return True


def pick_device(device: Optional[str] = None) -> torch.device:
    """The requested device, or the best available one (CUDA, then MPS, then CPU)."""
    if device in (None, "auto"):
        return torch.device(next(kind for kind in _DEVICE_PREFERENCE if _device_available(kind)))
    requested = torch.device(device)
    if not _device_available(requested.type):
        raise RuntimeError(f"--device {device} was asked for, but {requested.type.upper()} "
                           "is not available on this machine")
    return requested
