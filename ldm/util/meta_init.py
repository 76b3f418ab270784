"""Building models on the meta device without running their random initialisation.

A meta tensor has a shape and a dtype but no values, so filling one with random numbers does
nothing, yet it is not free: ``normal_`` on a meta tensor runs torch's Python reference kernel,
whose first call imports ``torch._dynamo`` (about 1.5 s of start-up for a command that never
compiles anything). Inside :func:`no_random_init_on_meta` those fills return the tensor as it is.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

# ``torch.nn.init`` functions and in-place Tensor methods that only draw random values.
RANDOM_FILLS = frozenset({
    "normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_",
    "xavier_uniform_", "orthogonal_", "sparse_", "random_", "bernoulli_", "cauchy_", "exponential_",
    "geometric_", "log_normal_",
})


class _SkipRandomFillsOnMeta(TorchFunctionMode):
    """Returns a meta tensor unchanged from a random fill; every other call runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in RANDOM_FILLS:
            # ``torch.nn.init`` passes the tensor by keyword, Tensor methods as ``self``.
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_random_init_on_meta() -> Iterator[None]:
    """Random fills of meta tensors (parameter initialisation of a model built on the meta
    device) do nothing inside; tensors on real devices are initialised as usual."""
    with _SkipRandomFillsOnMeta():
        yield
