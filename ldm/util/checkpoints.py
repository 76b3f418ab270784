"""The one checkpoint reader and writer: ``.safetensors`` and torch ``.ckpt``/``.pt``/``.pth``/``.bin``
files, with or without the original ``state_dict`` wrapper, told apart by their content, read
safely: no code runs, nothing is allocated beyond what the file holds, and only plain dense
tensors of finite numbers come out. Tensors are memory-mapped where the format allows (safetensors,
torch zip files): read when used, never copied. A bad file is a :class:`~ldm.util.errors.CheckpointError`
with a one-line reason (docs/SECURITY.md)."""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ldm.util import mapped_safetensors
from ldm.util.atomic_write import write_atomically
from ldm.util.checkpoint_files import SAFETENSORS, TORCH_ZIP, check_torch_file, not_a_checkpoint, sniff_format
from ldm.util.errors import CheckpointError, first_line
from ldm.util.file_pages import FileMappedPages
from ldm.util.paths import in_cwd_or_repository
from ldm.util.safe_unpickling import torch_load_safely

# Entries of a bare (unwrapped) checkpoint that are not tensors but metadata.
_METADATA_KEYS = ("global_step", "epoch")
_NAMED_AT_MOST = 3
_PLAIN_VALUES = (str, int, float, bool, type(None))


def _describe_load_failure(path: str, err: Exception) -> str:
    blocked = re.search(r"GLOBAL (\S+)", str(err))
    if blocked:
        return (f"{path} holds pickled Python objects that are not plain tensors ({blocked.group(1)}); refusing "
                "to load it (it could run code). Convert it to .safetensors with a trusted tool, or "
                "re-save only its state_dict.")
    return str(not_a_checkpoint(path, first_line(err, after="WeightsUnpickler error:")))


def _load_safetensors(path: str, shapes_only: bool = False,
                      checked: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The tensors (``shapes_only``: their shapes, from the header) and metadata of a safetensors
    file. The tensors are memory-mapped (:mod:`ldm.util.mapped_safetensors`); ``checked``: each is
    checked as :func:`load_checkpoint` does while it is mapped, so that reading them for the check
    leaves none of them resident."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    non_finite: List[str] = []

    def check(key: str, tensor: torch.Tensor) -> None:
        _check_tensors(path, {key: tensor})
        if tensor.is_floating_point() and not _all_finite(tensor):
            non_finite.append(key)

    try:
        with safe_open(path, framework="pt") as handle:  # checks the header before we read it
            raw_meta = handle.metadata() or {}
            if shapes_only:
                state_dict = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        if not shapes_only and mapped_safetensors.CAN_MAP:
            state_dict = mapped_safetensors.map_tensors(path, check if checked else None)
        elif not shapes_only:
            state_dict = load_file(path, device="cpu")
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(_describe_load_failure(path, err)) from None
    if non_finite:
        raise _non_finite_error(path, non_finite)
    metadata: Dict[str, Any] = {}
    for key, value in raw_meta.items():
        metadata[key] = int(value) if key in _METADATA_KEYS and value.lstrip("-").isdigit() else value
    return state_dict, metadata


def _read_torch(path: str, kind: str, mmap: bool = False) -> Any:
    """The object in a torch file, after :func:`~ldm.util.checkpoint_files.check_torch_file`."""
    check_torch_file(path, kind)
    try:
        return torch_load_safely(path, mmap and kind == TORCH_ZIP)  # legacy files cannot be memory-mapped
    except Exception as err:  # UnpicklingError, zip errors, EOF, ...: all mean "cannot use this file"
        raise CheckpointError(_describe_load_failure(path, err)) from None


def _load_torch(path: str, kind: str, mmap: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    obj = _read_torch(path, kind, mmap)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    metadata = {k: v for k, v in obj.items() if k in _METADATA_KEYS}
    if isinstance(obj.get("state_dict"), Mapping):
        state_dict = obj["state_dict"]
    else:
        state_dict = {k: v for k, v in obj.items() if k not in _METADATA_KEYS}
    return dict(state_dict), metadata


def _check_tensors(path: str, state_dict: Mapping[Any, Any]) -> None:
    """Every entry a plain dense CPU tensor of real numbers, no larger than its own data."""
    if not state_dict:
        raise CheckpointError(f"{path} holds no tensors")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: its state dict has a key that is not a name ({key!r:.60}); refusing it")
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise CheckpointError(f"{path}: state dict entry {key} is a {type(value).__name__}, not a tensor; "
                                  "refusing to load it")
        problem = _tensor_problem(value)
        if problem:
            raise CheckpointError(f"{path}: {key} is {problem}; refusing to load it (only plain dense tensors "
                                  "of real numbers are loaded)")


def _tensor_problem(value: torch.Tensor) -> Optional[str]:
    if value.layout != torch.strided:
        return f"a {str(value.layout).replace('torch.', '').replace('_', ' ')} tensor"
    if value.is_meta or value.device.type != "cpu":
        return "a meta tensor (a shape without data)" if value.is_meta else f"a {value.device.type} tensor"
    if value.is_quantized or value.is_nested:
        return "a quantized tensor" if value.is_quantized else "a nested tensor"
    if value.is_complex():
        return f"a complex tensor ({str(value.dtype).replace('torch.', '')})"
    if value.numel() * value.element_size() > value.untyped_storage().nbytes():
        return f"a view of shape {tuple(value.shape)} over only {value.untyped_storage().nbytes()} bytes"
    if getattr(value, "_backward_hooks", None):
        return "a tensor with backward hooks"
    return None


def _check_finite(path: str, state_dict: Mapping[str, torch.Tensor], pages: Optional[FileMappedPages] = None) -> None:
    """Refuse NaN or infinite weights up front: they make black or noise images silently. With
    ``pages`` (the file's mappings), the pages each check read are given back as it goes, so that
    the check leaves no tensor resident (a part holds memory only once it is used)."""
    bad: List[str] = []
    for key, value in state_dict.items():
        if value.is_floating_point() and not _all_finite(value):
            bad.append(key)
        if pages is not None:
            pages.give_back(value)
    if bad:
        raise _non_finite_error(path, bad)


def _non_finite_error(path: str, bad: List[str]) -> CheckpointError:
    named = ", ".join(bad[:_NAMED_AT_MOST]) + (f" and {len(bad) - _NAMED_AT_MOST} more" if len(bad) >
                                               _NAMED_AT_MOST else "")
    return CheckpointError(f"{path} holds NaN or infinite weights in {len(bad)} tensor(s) ({named}); "
                           "refusing to load it (the images would be black or noise)")


def _all_finite(value: torch.Tensor) -> bool:
    """NaN propagates through min and max, and an infinity is one of them: one cheap pass."""
    if value.numel() == 0:
        return True
    if value.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        value = value.float()  # float8: no min/max kernels
    low, high = torch.aminmax(value)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _readable_checkpoint_path(path: str) -> str:
    """``path`` (see ``in_cwd_or_repository``) if it is a non-empty file, else CheckpointError."""
    path = in_cwd_or_repository(os.fspath(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    return path


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a safetensors or torch checkpoint safely, whatever its name says it is.

    Returns ``(state_dict, metadata)``: the tensors (unwrapped from a ``state_dict`` entry when
    present) and whatever of ``global_step`` / ``epoch`` (or safetensors metadata) the file has.
    Raises :class:`CheckpointError` with a one-line reason for a missing, corrupted or unsafe
    file, one whose state dict holds anything but plain dense real tensors, or NaN/inf weights.
    """
    path = _readable_checkpoint_path(path)
    kind = sniff_format(path)
    if kind == SAFETENSORS:
        state_dict, metadata = _load_safetensors(path, checked=True)
        if not state_dict:
            raise CheckpointError(f"{path} holds no tensors")
        return state_dict, metadata
    state_dict, metadata = _load_torch(path, kind, mmap=True)
    _check_tensors(path, state_dict)
    _check_finite(path, state_dict, FileMappedPages(path))
    return state_dict, metadata


def load_tensors(path: str, allow_plain_values: bool = False) -> Any:
    """Tensors saved in plain containers (tuples, lists, dicts of tensors) rather than as a state
    dict, such as unCLIP's ``ViT-L-14_stats.th`` (a ``(mean, std)`` tuple), read with the checks of
    :func:`load_checkpoint`. ``allow_plain_values``: numbers, strings and None may stand beside the
    tensors (an A1111 textual-inversion ``.pt`` holds its name and training step). Raises
    :class:`CheckpointError` with a one-line reason."""
    path = _readable_checkpoint_path(path)
    kind = sniff_format(path)
    obj = _load_safetensors(path)[0] if kind == SAFETENSORS else _read_torch(path, kind)
    leaves: Dict[str, Any] = {}
    pending = [("", obj)]
    while pending:
        name, item = pending.pop()
        if isinstance(item, (tuple, list)):
            pending.extend((f"{name}[{i}]", value) for i, value in enumerate(item))
        elif isinstance(item, dict):
            pending.extend((f"{name}[{key!r}]", value) for key, value in item.items())
        elif not (allow_plain_values and isinstance(item, _PLAIN_VALUES)):
            leaves[name or "the file"] = item
    _check_tensors(path, leaves)
    _check_finite(path, leaves)
    return obj


def checkpoint_tensor_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors, read without loading their data where the
    format allows (the safetensors header; a torch zip memory-mapped), e.g. to tell which config
    fits a file before loading it for real. Raises :class:`CheckpointError` as ``load_checkpoint``."""
    path = _readable_checkpoint_path(path)
    kind = sniff_format(path)
    if kind == SAFETENSORS:
        return _load_safetensors(path, shapes_only=True)[0]
    tensors, _ = _load_torch(path, kind, mmap=True)
    _check_tensors(path, tensors)
    return {key: tuple(value.shape) for key, value in tensors.items()}


def checkpoint_metadata(path: str) -> Dict[str, Any]:
    """What :func:`load_checkpoint` returns besides the tensors (``global_step``, ``epoch`` or the
    safetensors metadata), read without loading the tensors where the format allows."""
    path = _readable_checkpoint_path(path)
    kind = sniff_format(path)
    if kind == SAFETENSORS:
        return _load_safetensors(path, shapes_only=True)[1]
    return _load_torch(path, kind, mmap=True)[1]


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str,
                    metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Write a state dict as ``.safetensors`` (by extension) or as a ``.ckpt`` with the original
    ``{"state_dict": ...}`` container, atomically (:func:`~ldm.util.atomic_write.write_atomically`)."""
    path = os.fspath(path)
    metadata = dict(metadata or {})
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()}))
    else:
        write_atomically(path, lambda tmp: torch.save({"state_dict": OrderedDict(state_dict), **metadata}, tmp))
