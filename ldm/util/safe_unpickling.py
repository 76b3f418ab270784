"""``torch.load`` that can never run code: ``weights_only=True``, with the few non-tensor names
that released Stable Diffusion / Lightning checkpoints pickle mapped to inert stand-ins."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


class _InertPickledName:
    """Stands in for a class that old Lightning checkpoints name as a dict key (for example the
    ModelCheckpoint class in ``callbacks``). It is never called; it only lets such files load
    with ``weights_only=True`` without importing or running anything."""


# Names that released Stable Diffusion / Lightning checkpoints reference in their pickles
# outside of the tensors. All are mapped to inert placeholders: nothing of them is executed.
_INERT_PICKLE_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


def _numpy_globals() -> list:
    """numpy objects that Lightning callback states hold (scores, arrays). numpy 1.x pickles them
    under ``numpy.core``, numpy 2.x under ``numpy._core``: allow both spellings."""
    core = getattr(np, "_core", None) or np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    names: list = [np.ndarray, np.dtype]
    for module in ("numpy.core", "numpy._core"):
        names += [(reconstruct, f"{module}.multiarray._reconstruct"),
                  (scalar, f"{module}.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return names


def safe_globals() -> list:
    """Everything besides tensors that ``torch.load(weights_only=True)`` may meet in a released file."""
    return [(_InertPickledName, name) for name in _INERT_PICKLE_NAMES] + _numpy_globals()


def torch_load_safely(path: str, mmap: bool) -> Any:
    """``torch.load(path)`` onto the CPU with ``weights_only=True`` and :func:`safe_globals`."""
    with torch.serialization.safe_globals(safe_globals()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "pickle protocol N" notes on odd files
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
