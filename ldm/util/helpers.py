"""The small helpers the original ``ldm.util`` exposes and the models use everywhere."""
from __future__ import annotations

from inspect import isfunction

import torch
import torch.nn as nn


def exists(x) -> bool:
    return x is not None


def default(val, d):
    """``val`` if it is not None, else ``d`` (called first when it is a function)."""
    if exists(val):
        return val
    return d() if isfunction(d) else d


def ismap(x) -> bool:
    return isinstance(x, torch.Tensor) and len(x.shape) == 4 and x.shape[1] > 3


def isimage(x) -> bool:
    return isinstance(x, torch.Tensor) and len(x.shape) == 4 and x.shape[1] in (1, 3)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return tensor.mean(dim=list(range(1, len(tensor.shape))))


def count_params(model: nn.Module, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1.e-6:.2f} M params.")
    return total
