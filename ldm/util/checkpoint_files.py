"""A checkpoint's format told by its content (never by its name), and its structure checked
before torch reads it, so that a file can only make the loader allocate what it holds:

* torch zip (``PK\\x03\\x04``): members stored, not compressed (torch writes them stored; a
  compressed member can inflate to gigabytes), each inside the file, no name twice, one folder;
  every storage the pickle declares no larger than its member;
* legacy torch (a pickle stream, pre-1.6 ``torch.save``): the storages the pickle declares fit in
  what follows the pickles;
* safetensors (8-byte little-endian header length, then ``{``): the header fits the file (the
  safetensors library checks the rest).

Every pickle is first walked by :func:`ldm.util.pickle_scan.scan_pickle` and each name it imports
is checked against :func:`ldm.util.safe_unpickling.refusal_for_global`.
"""
from __future__ import annotations

import mmap
import os
import struct
import zipfile

from ldm.util.errors import CheckpointError
from ldm.util.pickle_scan import PickleRefused, PickleScan, scan_pickle, storage_sizes
from ldm.util.safe_unpickling import STORAGE_ELEMENT_SIZES, refusal_for_global

SAFETENSORS, TORCH_ZIP, TORCH_LEGACY = "safetensors", "torch zip", "legacy torch"
_ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s22sHH")  # signature, fixed fields, name length, extra length
_LEGACY_PICKLES = 5  # magic number, protocol version, system info, the object, the storage keys


def not_a_checkpoint(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {path}: the file is corrupted, truncated or not a "
                           f"checkpoint ({reason[:160]})")


def sniff_format(path: str) -> str:
    """:data:`SAFETENSORS`, :data:`TORCH_ZIP` or :data:`TORCH_LEGACY`, from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == _ZIP_MAGIC:
        return TORCH_ZIP
    if len(head) == 9 and head[8:9] == b"{":
        return SAFETENSORS
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return TORCH_LEGACY
    raise not_a_checkpoint(path, "neither a torch zip, a legacy torch file nor a safetensors file")


def check_torch_file(path: str, kind: str) -> None:
    """Refuse a torch file (``kind`` from :func:`sniff_format`) whose structure or pickle could
    run code, build something other than plain tensors, or allocate more than the file holds."""
    try:
        if kind == TORCH_ZIP:
            _check_zip(path)
        else:
            _check_legacy(path)
    except PickleRefused as err:
        raise not_a_checkpoint(path, str(err)) from None


def _check_globals(path: str, scan: PickleScan) -> None:
    for name in dict.fromkeys(scan.globals):
        kind = refusal_for_global(name)
        if kind is None:
            continue
        advice = ("it could run code. Convert it to .safetensors with a trusted tool, or re-save only its "
                  "state_dict" if kind.startswith("pickled") else "only plain dense tensors are loaded")
        raise CheckpointError(f"{path} holds {kind}; refusing to load it ({advice})")


def _check_zip(path: str) -> None:
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            _check_zip_members(path, members, size)
            prefix = members[0].filename.split("/", 1)[0]
            pickle_name = f"{prefix}/data.pkl"
            if pickle_name not in archive.NameToInfo:
                raise not_a_checkpoint(path, f"no {pickle_name} in the zip archive")
            data = archive.read(pickle_name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, UnicodeDecodeError) as err:
        raise not_a_checkpoint(path, f"zip archive: {err}") from None
    scan = scan_pickle(data)
    _check_globals(path, scan)
    by_name = {member.filename: member for member in members}
    for key, (_, nbytes) in storage_sizes(scan, STORAGE_ELEMENT_SIZES).items():
        member = by_name.get(f"{prefix}/data/{key}")
        if member is None:
            raise not_a_checkpoint(path, f"storage {key!r} has no data in the archive")
        if nbytes > member.file_size:
            raise CheckpointError(f"{path}: storage {key!r} declares {nbytes} bytes but the file holds "
                                  f"{member.file_size} for it; refusing to load it")


def _check_zip_members(path: str, members: list, size: int) -> None:
    if not members:
        raise not_a_checkpoint(path, "an empty zip archive")
    names = [member.filename for member in members]
    if len(set(names)) != len(names):
        raise not_a_checkpoint(path, "the zip archive holds two members of the same name")
    prefix = names[0].split("/", 1)[0] + "/"
    if any(not name.startswith(prefix) for name in names):
        raise not_a_checkpoint(path, "the zip archive holds more than one top folder")
    with open(path, "rb") as handle:
        for member in members:
            if member.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    f"{path}: zip member {member.filename} is compressed ({member.compress_size} bytes that "
                    f"expand to {member.file_size}); torch writes checkpoints uncompressed, refusing to load it")
            if member.flag_bits & 0x1:
                raise not_a_checkpoint(path, f"zip member {member.filename} is encrypted")
            handle.seek(member.header_offset)
            header = handle.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
                raise not_a_checkpoint(path, f"zip member {member.filename} has no local header")
            _, _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
            end = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length + member.file_size
            if end > size:
                raise not_a_checkpoint(path, f"zip member {member.filename} runs past the end of the file")


def _check_legacy(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position, declared = 0, {}
        for index in range(_LEGACY_PICKLES):
            scan = scan_pickle(data, position)
            _check_globals(path, scan)
            if index != 3 and scan.storages:
                raise not_a_checkpoint(path, "a storage outside the object pickle")
            declared.update(storage_sizes(scan, STORAGE_ELEMENT_SIZES))
            position = scan.end
    total = sum(nbytes for _, nbytes in declared.values())
    if total > size - position:
        raise CheckpointError(f"{path}: its storages declare {total} bytes but the file holds "
                              f"{size - position} after its pickles; refusing to load it")

