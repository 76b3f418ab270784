"""Tensors of a safetensors file, memory-mapped one mapping per tensor.

Each tensor views its own private (copy-on-write) mapping of the file, so nothing is read until
the tensor is used, the file never changes, and a tensor's pages leave the process's memory when
the tensor is dropped: a loader that casts the tensors one by one, dropping each source, never
holds the whole file and the whole cast model at once. A file of float32 weights
loaded into a float32 model is used in place: the weights are the file's pages, never copied.
"""
from __future__ import annotations

import json
import mmap
import struct
import sys
from typing import Callable, Dict, Optional, Tuple

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
_HEADER_LENGTH = struct.Struct("<Q")
# The safetensors library has checked the header (offsets inside the file, sizes that match the
# shapes) before these functions read it.
CAN_MAP = sys.byteorder == "little"
# Pages read by the check are given back to the page cache: a tensor then holds memory only once
# it is used (the VAE not before decoding, EMA copies never).
_GIVE_BACK = getattr(mmap, "MADV_DONTNEED", None)


def header(path: str) -> Tuple[Dict[str, dict], int]:
    """The per-tensor entries of the file's JSON header and where the data begins."""
    with open(path, "rb") as handle:
        (length,) = _HEADER_LENGTH.unpack(handle.read(_HEADER_LENGTH.size))
        entries = json.loads(handle.read(length))
    entries.pop("__metadata__", None)
    return entries, _HEADER_LENGTH.size + length


def map_tensors(path: str, check: Optional[Callable[[str, torch.Tensor], None]] = None
                ) -> Dict[str, torch.Tensor]:
    """Every tensor of ``path`` on its own mapping, in file order; ``check(key, tensor)`` runs on
    each as it is mapped, and the pages it read are then given back (they stay in the page cache)."""
    entries, data_start = header(path)
    tensors: Dict[str, torch.Tensor] = {}
    with open(path, "rb") as handle:
        for key, entry in sorted(entries.items(), key=lambda item: item[1]["data_offsets"][0]):
            tensor, mapping = _map_one(handle.fileno(), entry, data_start)
            if check is not None:
                check(key, tensor)
                if mapping is not None and _GIVE_BACK is not None:
                    mapping.madvise(_GIVE_BACK)
            tensors[key] = tensor
    return tensors


def _map_one(fileno: int, entry: dict, data_start: int) -> Tuple[torch.Tensor, Optional[mmap.mmap]]:
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"unsupported dtype {entry['dtype']}")
    shape = tuple(entry["shape"])
    begin, end = (data_start + offset for offset in entry["data_offsets"])
    if end == begin:
        return torch.empty(shape, dtype=dtype), None
    start = begin - begin % mmap.ALLOCATIONGRANULARITY
    mapping = mmap.mmap(fileno, end - start, access=mmap.ACCESS_COPY, offset=start)
    count = (end - begin) // torch.empty((), dtype=dtype).element_size()
    return torch.frombuffer(mapping, dtype=dtype, count=count, offset=begin - start).view(shape), mapping
