"""What a checkpoint's pickle may name, and ``torch.load`` that can never run code.

:func:`refusal_for_global` is the allowlist that :mod:`ldm.util.checkpoint_files` applies to every
name a pickle imports before torch reads the file: plain dense tensors and parameters, their
storages and dtypes, containers, and the few other names released Stable Diffusion / Lightning
checkpoints hold (callback classes as dict keys, numpy scalars in callback states). It is
narrower than torch's own ``weights_only`` list: no sparse, meta, nested, quantized or complex
tensors, no ``bytearray`` (it allocates what the pickle asks, not what the file holds).

:func:`torch_load_safely` then loads with ``weights_only=True`` and maps the numpy and Lightning
names to inert stand-ins of ours: no real ``numpy.ndarray`` or ``numpy.dtype`` is ever rebuilt from
a file (an object dtype built from raw bytes is an attacker-chosen pointer), only numeric
numpy scalars of bounded size.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch


class _InertPickledName:
    """Stands in for a class that old Lightning checkpoints name as a dict key (for example the
    ModelCheckpoint class in ``callbacks``). It is never called; it only lets such files load
    with ``weights_only=True`` without importing or running anything."""


_LIGHTNING_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
# numpy kinds a scalar may have: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = "biuf"
_MAX_SCALAR_BYTES = 16

# Storage classes a tensor's data may come in, with their element size in bytes.
STORAGE_ELEMENT_SIZES = {
    f"torch.{name}Storage": torch._utils._element_size(dtype) for name, dtype in (
        ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16),
        ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16),
        ("Char", torch.int8), ("Byte", torch.uint8), ("Bool", torch.bool))
}
STORAGE_ELEMENT_SIZES["torch.storage.UntypedStorage"] = 1  # _rebuild_tensor_v3: the dtype comes apart

_TENSOR_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "bool", "float16",
                  "bfloat16", "float32", "float64", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz",
                  "float8_e4m3fnuz")

ALLOWED_GLOBALS = frozenset(
    ["collections.OrderedDict", "builtins.set", "_codecs.encode", "torch.Size", "torch.device",
     "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
     "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
     "torch._tensor._rebuild_from_type_v2", "torch.Tensor", "torch.nn.parameter.Parameter",
     "numpy.dtype", "numpy.ndarray", *_LIGHTNING_NAMES]
    + [f"torch.{name}" for name in _TENSOR_DTYPES] + list(STORAGE_ELEMENT_SIZES)
    + [f"{module}.{name}" for module in _NUMPY_MODULES for name in ("scalar", "_reconstruct")]
)

# Names torch's weights_only list accepts but we refuse, with what they would have built.
_REFUSED_KINDS = {
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch.serialization._get_layout": "a sparse tensor",
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor (a shape without data)",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass",
    "torch._utils._rebuild_device_tensor_from_numpy": "a tensor rebuilt from a numpy array",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a tensor of another device type",
    "builtins.bytearray": "a bytearray (it can ask for more memory than the file holds)",
    "builtins.complex": "a complex number",
    "collections.Counter": "a Counter",
}


def refusal_for_global(name: str) -> Optional[str]:
    """None when a checkpoint's pickle may import ``name``; else what it would have built."""
    if name in ALLOWED_GLOBALS:
        return None
    if name in _REFUSED_KINDS:
        return _REFUSED_KINDS[name]
    if name.startswith("torch."):
        tail = name.rsplit(".", 1)[-1]
        if "complex" in tail.lower():
            return "complex weights"
        if tail.startswith(("q", "Q", "per_channel", "per_tensor")):
            return "a quantized tensor"
        if tail.endswith("Storage") or isinstance(getattr(torch, tail, None), torch.dtype):
            return f"a tensor of type {tail}"
    return f"pickled Python objects that are not plain tensors ({name})"


class _PickledNumpyDtype:
    """Stands in for ``numpy.dtype`` in a pickle: it keeps the type code and byte order and builds
    a real dtype only for a numeric scalar (:func:`_numpy_scalar`). Its ``__setstate__`` only reads
    the byte order: a real dtype's state is never set from a file."""

    def __new__(cls, code: Any = None, align: Any = False, copy: Any = True):
        instance = super().__new__(cls)
        instance.code, instance.byteorder = code, "="
        return instance

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]

    def numeric_dtype(self) -> np.dtype:
        code = self.code.decode("latin-1") if isinstance(self.code, bytes) else self.code
        if not isinstance(code, str) or len(code) > 4 or not code[:1].isalpha() or not code[1:].isdigit():
            raise ValueError(f"a numpy value of type {code!r} is not a plain number")
        dtype = np.dtype(code)
        if dtype.kind not in _NUMERIC_KINDS or dtype.itemsize > _MAX_SCALAR_BYTES:
            raise ValueError(f"a numpy value of type {code!r} is not a plain number")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in ("<", ">") else dtype


def _numpy_scalar(dtype: Any, data: Any = None):
    """``numpy.core.multiarray.scalar(dtype, data)`` for bool/int/float dtypes only, from exactly
    the dtype's number of bytes."""
    if not isinstance(dtype, _PickledNumpyDtype):
        raise ValueError("a numpy scalar without a numpy dtype")
    numeric = dtype.numeric_dtype()
    if not isinstance(data, bytes) or len(data) != numeric.itemsize:
        raise ValueError(f"a numpy scalar of type {numeric} needs {numeric.itemsize} bytes")
    return np.frombuffer(data, dtype=numeric)[0].copy()


class _DroppedNumpyArray:
    """Stands in for a numpy array (Lightning callback states may hold some): an inert object,
    whatever the file says its shape, dtype or bytes are. In a state dict it is refused as a
    value that is not a tensor."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __iter__(self):
        raise ValueError("a numpy array used as a value (numpy arrays are not loaded from checkpoints)")


def _dropped_numpy_array(*args: Any) -> _DroppedNumpyArray:
    """``numpy.core.multiarray._reconstruct(ndarray, shape, dtype)`` without building anything."""
    return _DroppedNumpyArray()


def _stand_ins() -> list:
    """(object, pickled name) pairs handed to ``torch.serialization.safe_globals``."""
    pairs = [(_InertPickledName, name) for name in _LIGHTNING_NAMES]
    pairs += [(_PickledNumpyDtype, "numpy.dtype"), (_DroppedNumpyArray, "numpy.ndarray")]
    for module in _NUMPY_MODULES:
        pairs += [(_numpy_scalar, f"{module}.scalar"), (_dropped_numpy_array, f"{module}._reconstruct")]
    return pairs


def torch_load_safely(path: str, mmap: bool) -> Any:
    """``torch.load(path)`` onto the CPU with ``weights_only=True`` and our inert stand-ins. Call it
    only on a file :func:`ldm.util.checkpoint_files.check_torch_file` has accepted. torch picks the
    safetensors reader for a path named ``*.safetensors``: such a (misnamed) torch file is read
    through an open handle instead, without a memory map."""
    with torch.serialization.safe_globals(_stand_ins()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "pickle protocol N" notes on odd files
        if mmap and not str(path).endswith(".safetensors"):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True, mmap=False)
