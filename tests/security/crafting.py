"""Tools the security tests use to build hostile files inside each test: a tiny assembler for the
pickle opcodes ``torch.load(weights_only=True)`` reads, and writers for torch's zip layout, its
legacy (pre-1.6) layout and the safetensors layout, so that a test can say exactly which bytes
it feeds the loader."""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Tuple

PROTO2 = b"\x80\x02"
MARK, STOP, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b"(", b".", b"t", b"\x85", b"\x86", b"\x87"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, EMPTY_SET = b"}", b"]", b")", b"\x8f"
SETITEM, SETITEMS, APPEND, APPENDS = b"s", b"u", b"a", b"e"
REDUCE, BUILD, NEWOBJ, BINPERSID = b"R", b"b", b"\x81", b"Q"
NONE, NEWTRUE, NEWFALSE = b"N", b"\x88", b"\x89"


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    if -2 ** 31 <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def real(value: float) -> bytes:
    return b"G" + struct.pack(">d", value)


def put(index: int) -> bytes:
    return b"q" + bytes([index])


def get(index: int) -> bytes:
    return b"h" + bytes([index])


def tuple_(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(module: str, name: str, *args: bytes) -> bytes:
    """``module.name(*args)`` (GLOBAL, argument tuple, REDUCE)."""
    return global_(module, name) + tuple_(*args) + REDUCE


def dict_(items: Mapping[str, bytes]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(text(k) + v for k, v in items.items()) + SETITEMS


def pickle_of(obj: bytes) -> bytes:
    return PROTO2 + obj + STOP


def storage(key: str, numel: int, storage_class: str = "FloatStorage", location: str = "cpu") -> bytes:
    """The persistent id torch.save writes for a storage: ('storage', class, key, location, numel)."""
    return tuple_(text("storage"), global_("torch", storage_class), text(key), text(location),
                  integer(numel)) + BINPERSID


def tensor(key: str, shape: Tuple[int, ...], numel: int = None, storage_class: str = "FloatStorage",
           offset: int = 0, stride: Tuple[int, ...] = None) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())``."""
    if stride is None:
        stride, step = [], 1
        for size in reversed(shape):
            stride.insert(0, step)
            step *= size
    numel = numel if numel is not None else _product(shape)
    return call("torch._utils", "_rebuild_tensor_v2",
                storage(key, numel, storage_class), integer(offset),
                tuple_(*map(integer, shape)), tuple_(*map(integer, stride)), NEWFALSE,
                call("collections", "OrderedDict"))


def _product(shape) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


def write_torch_zip(path: Path, data_pkl: bytes, records: Dict[str, bytes] = None, compress: bool = False,
                    prefix: str = "archive", extra: Dict[str, bytes] = None) -> Path:
    """A file in torch's zip layout: ``<prefix>/data.pkl``, ``<prefix>/data/<key>`` per storage,
    ``version`` and ``byteorder``; members stored (as torch writes them) unless ``compress``."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", b"little")
        for key, data in (records or {}).items():
            archive.writestr(f"{prefix}/data/{key}", data)
        for name, data in (extra or {}).items():
            archive.writestr(f"{prefix}/{name}", data)
        archive.writestr(f"{prefix}/version", b"3\n")
    return path


def write_legacy_torch(path: Path, data_pkl: bytes, storages: Dict[str, Tuple[int, bytes]] = None) -> Path:
    """A file in torch's legacy (pre-1.6) layout: magic number, protocol and system-info pickles,
    the object pickle, the pickled list of storage keys, then per storage an 8-byte element count
    and the bytes. ``storages``: key -> (declared element count, bytes)."""
    import pickle

    storages = storages or {}
    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out += data_pkl + pickle.dumps(list(storages), protocol=2)
    for count, data in storages.values():
        out += struct.pack("<q", count) + data
    path.write_bytes(out)
    return path


def write_safetensors(path: Path, header: object, data: bytes = b"", declared_length: int = None) -> Path:
    """A safetensors file: 8-byte little-endian header length, the JSON header, the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if declared_length is None else declared_length
    path.write_bytes(struct.pack("<Q", length) + raw + data)
    return path
