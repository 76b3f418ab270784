"""Giving back the memory of tensors memory-mapped from a checkpoint file once they have been read.

``ldm.util.checkpoints`` reads a ``.ckpt`` with ``torch.load(mmap=True, weights_only=True)``, which maps the
whole file in one private mapping, so the pages a pass over
its tensors touches (the NaN/inf check, a cast to another dtype) stay in the process's memory until
every tensor of the file is gone. ``madvise(MADV_DONTNEED)`` on the whole pages inside a tensor's
storage drops them at once; the next touch reads them from the file again (a private file mapping
is filled from the file, not with zeros), so the values never change, as long as nothing wrote to
those pages: true of a checkpoint's tensors before the model uses them.

Only pages inside a mapping of the checkpoint file itself (found in ``/proc/self/maps`` by its path,
or by device and inode) are given back: on anonymous memory ``MADV_DONTNEED`` would zero the data. Where there is
no ``/proc/self/maps`` or no ``madvise`` (not Linux), nothing is given back.
"""
from __future__ import annotations

import bisect
import ctypes
import mmap
import os
from typing import List, Optional, Tuple

import torch

_MAPS = "/proc/self/maps"
_DONT_NEED = getattr(mmap, "MADV_DONTNEED", None)


def _madvise():
    """libc's ``madvise(addr, length, advice)``, or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


class FileMappedPages:
    """The mappings of ``path`` in this process, read once from ``/proc/self/maps``;
    :meth:`give_back` drops the pages of a tensor that lies inside one of them."""

    def __init__(self, path: str):
        self._starts: List[int] = []
        self._ends: List[int] = []
        self._madvise = _madvise() if _DONT_NEED is not None else None
        if self._madvise is not None:
            for start, end in _mappings_of(path):
                self._starts.append(start)
                self._ends.append(end)

    def give_back(self, tensor: torch.Tensor) -> bool:
        """Drop the whole pages of ``tensor``'s storage from memory if it lies inside a mapping of
        the file (they are read from the file again when next used); True when some were dropped."""
        storage = tensor.untyped_storage()
        begin, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        index = bisect.bisect_right(self._starts, begin) - 1
        if index < 0 or end > self._ends[index]:
            return False
        page = mmap.PAGESIZE
        first, last = -(-begin // page) * page, end // page * page  # whole pages only: neighbours keep theirs
        if last <= first:
            return False
        return self._madvise(first, last - first, _DONT_NEED) == 0


def _mappings_of(path: str) -> List[Tuple[int, int]]:
    """``(start, end)`` of every mapping of the file ``path`` in this process, sorted."""
    try:
        status = os.stat(path)
        with open(_MAPS, encoding="utf-8", errors="replace") as maps:
            lines = maps.readlines()
    except OSError:
        return []
    wanted = ((os.major(status.st_dev), os.minor(status.st_dev), status.st_ino), os.path.realpath(path))
    found = []
    for line in lines:
        mapping = _parse_maps_line(line)
        if mapping is not None and (mapping[2] == wanted[0] or mapping[3] == wanted[1]):
            found.append(mapping[:2])
    return sorted(found)


def _parse_maps_line(line: str) -> Optional[Tuple[int, int, Tuple[int, int, int], str]]:
    """``(start, end, (device major, minor, inode), path)`` of one ``/proc/self/maps`` line (an
    overlay file system may show another device and inode than ``os.stat``, hence the path too)."""
    fields = line.rstrip("\n").split(maxsplit=5)
    if len(fields) < 5:
        return None
    try:
        start, end = (int(value, 16) for value in fields[0].split("-"))
        major, minor = (int(value, 16) for value in fields[3].split(":"))
        inode = int(fields[4])
    except ValueError:
        return None
    return start, end, (major, minor, inode), fields[5] if len(fields) > 5 else ""
