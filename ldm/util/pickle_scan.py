"""A pre-flight read of a checkpoint's pickle that runs nothing: it walks the opcodes the way
``torch.load(weights_only=True)`` reads them (the same opcode set, the same argument sizes) with a
stack of inert stand-ins, and reports which names the pickle imports and which storages it
declares. :mod:`ldm.util.checkpoint_files` uses it to refuse a file before torch allocates
anything for it."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from torch._utils import IMPORT_MAPPING, NAME_MAPPING  # the renames torch's own unpickler applies


class PickleRefused(ValueError):
    """The pickle is malformed or uses something :func:`scan_pickle` does not accept."""


@dataclass(frozen=True)
class Global:
    """A name the pickle imports (``GLOBAL module name``), never resolved here."""
    name: str


@dataclass
class StorageDeclaration:
    """A storage the pickle refers to: ``('storage', <class>, key, location, numel[, view])``."""
    storage_class: str
    key: str
    numel: int


@dataclass
class PickleScan:
    """What one pickle holds: the names it imports and the storages it declares; ``end`` is the
    offset just after its STOP opcode (a legacy torch file holds several pickles in a row)."""
    globals: List[str] = field(default_factory=list)
    storages: List[StorageDeclaration] = field(default_factory=list)
    end: int = 0


class _Opaque:
    """What a call, a dict, a list or a set becomes on the scan's stack: nothing is built."""


_OPAQUE = _Opaque()
# Opcodes read by torch's weights-only unpickler, each with the size of its fixed argument.
_FIXED = {b"\x81": 0, b"R": 0, b"b": 0, b"a": 0, b"e": 0, b"s": 0, b"u": 0, b"(": 0, b"t": 0,
          b"\x85": 0, b"\x86": 0, b"\x87": 0, b"N": 0, b"\x89": 0, b"\x88": 0, b")": 0, b"]": 0,
          b"}": 0, b"\x8f": 0, b"Q": 0, b"J": 4, b"K": 1, b"M": 2, b"G": 8, b"h": 1, b"j": 4,
          b"q": 1, b"r": 4, b"\x80": 1}


def scan_pickle(data: bytes, start: int = 0) -> PickleScan:
    """Walk the pickle that starts at ``data[start]``; raise :class:`PickleRefused` for an opcode
    torch would not read, a malformed stream or a malformed storage reference."""
    try:
        return _Scanner(data, start).run()
    except PickleRefused:
        raise
    except (IndexError, KeyError, struct.error, UnicodeDecodeError, TypeError, ValueError) as err:
        raise PickleRefused(f"malformed pickle ({type(err).__name__})") from None


class _Scanner:
    def __init__(self, data: bytes, start: int):
        self.data, self.pos = data, start
        self.stack: List[Any] = []
        self.marks: List[List[Any]] = []
        self.memo: Dict[int, Any] = {}
        self.scan = PickleScan()

    def read(self, size: int) -> bytes:
        chunk = self.data[self.pos:self.pos + size]
        if len(chunk) != size:
            raise PickleRefused("the pickle ends early (truncated file)")
        self.pos += size
        return chunk

    def readline(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise PickleRefused("the pickle ends early (truncated file)")
        line, self.pos = self.data[self.pos:end], end + 1
        return line.decode("utf-8")

    def pop_mark(self) -> List[Any]:
        items, self.stack = self.stack, self.marks.pop()
        return items

    def run(self) -> PickleScan:
        while True:
            op = self.read(1)
            if op == b".":
                self.scan.end = self.pos
                return self.scan
            if op == b"c":
                self.stack.append(self.global_())
            elif op in (b"X", b"U", b"\x8a"):
                size = struct.unpack("<I", self.read(4))[0] if op == b"X" else self.read(1)[0]
                raw = self.read(size)
                self.stack.append(int.from_bytes(raw, "little", signed=True) if op == b"\x8a" else
                                  raw.decode("utf-8", "surrogatepass" if op == b"X" else "strict"))
            elif op in _FIXED:
                self.fixed(op, self.read(_FIXED[op]))
            else:
                raise PickleRefused(f"opcode {op!r} at offset {self.pos - 1} is not one torch reads")

    def global_(self) -> Global:
        module, name = self.readline(), self.readline()
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        self.scan.globals.append(f"{module}.{name}")
        return Global(f"{module}.{name}")

    def fixed(self, op: bytes, arg: bytes) -> None:
        """One opcode with a fixed-size argument, as torch's unpickler treats it, minus the effects."""
        stack = self.stack
        if op in (b"\x81", b"R"):          # NEWOBJ, REDUCE: a call; nothing is called here
            stack.pop()
            stack[-1] = _OPAQUE
        elif op in (b"b", b"a", b"s"):     # BUILD, APPEND, SETITEM: consume, keep the target
            for _ in range(2 if op == b"s" else 1):
                stack.pop()
            self.need_target()
        elif op in (b"e", b"u"):           # APPENDS, SETITEMS
            self.pop_mark()
            self.need_target()
        elif op == b"(":
            self.marks.append(stack)
            self.stack = []
        elif op == b"t":
            items = self.pop_mark()
            self.stack.append(tuple(items))
        elif op in (b"\x85", b"\x86", b"\x87"):
            size = op[0] - 0x84
            if len(stack) < size:
                raise PickleRefused("malformed pickle (stack underflow)")
            stack[len(stack) - size:] = [tuple(stack[len(stack) - size:])]
        elif op in (b"N", b"\x89", b"\x88", b")"):
            stack.append({b"N": None, b"\x89": False, b"\x88": True, b")": ()}[op])
        elif op in (b"]", b"}", b"\x8f"):
            stack.append(_OPAQUE)
        elif op in (b"J", b"K", b"M"):
            stack.append(int.from_bytes(arg, "little", signed=op == b"J"))
        elif op == b"G":
            stack.append(struct.unpack(">d", arg)[0])
        elif op in (b"h", b"j"):
            stack.append(self.memo[int.from_bytes(arg, "little")])
        elif op in (b"q", b"r"):
            self.memo[int.from_bytes(arg, "little")] = stack[-1]
        elif op == b"Q":
            stack.append(self.persistent_id(stack.pop()))
        # PROTO: nothing to do

    def need_target(self) -> None:
        if not self.stack:
            raise PickleRefused("malformed pickle (stack underflow)")

    def persistent_id(self, pid: Any) -> _Opaque:
        """Record ``('storage', <class>, key, location, numel)`` (a legacy file adds a view)."""
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
            raise PickleRefused("a persistent reference that is not a storage")
        storage_class, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_class, Global) or not isinstance(key, str):
            raise PickleRefused("a storage reference without a storage class or key")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise PickleRefused(f"storage {key!r} declares {numel!r} elements")
        self.scan.storages.append(StorageDeclaration(storage_class.name, key, numel))
        return _OPAQUE


def storage_sizes(scan: PickleScan, element_sizes: Dict[str, int]) -> Dict[str, Tuple[str, int]]:
    """Per storage key: (storage class, declared bytes). A key declared twice counts at its
    largest; a storage class missing from ``element_sizes`` raises :class:`PickleRefused`."""
    sizes: Dict[str, Tuple[str, int]] = {}
    for declaration in scan.storages:
        if declaration.storage_class not in element_sizes:
            raise PickleRefused(f"storage {declaration.key!r} has type {declaration.storage_class}")
        nbytes = declaration.numel * element_sizes[declaration.storage_class]
        if declaration.key not in sizes or sizes[declaration.key][1] < nbytes:
            sizes[declaration.key] = (declaration.storage_class, nbytes)
    return sizes
