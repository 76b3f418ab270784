"""The one checkpoint reader and writer: ``.safetensors`` and ``.ckpt``/``.pt``/``.pth``/``.bin``
files, with or without the original ``state_dict`` wrapper, read safely (no code runs, a bad
file is a :class:`~ldm.util.errors.CheckpointError` with a one-line reason)."""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ldm.util.atomic_write import write_atomically
from ldm.util.errors import CheckpointError, first_line
from ldm.util.paths import in_cwd_or_repository
from ldm.util.safe_unpickling import torch_load_safely


def _describe_load_failure(path: str, err: Exception) -> str:
    blocked = re.search(r"GLOBAL (\S+)", str(err))
    if blocked:
        return (f"{path} holds pickled Python objects that are not plain tensors ({blocked.group(1)}); refusing "
                "to load it (it could run code). Convert it to .safetensors with a trusted tool, or "
                "re-save only its state_dict.")
    reason = first_line(err, after="WeightsUnpickler error:")
    return (f"cannot read checkpoint {path}: the file is corrupted, truncated or not a checkpoint "
            f"({reason[:120]})")


def _load_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            raw_meta = handle.metadata() or {}
        state_dict = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(_describe_load_failure(path, err)) from None
    metadata: Dict[str, Any] = {}
    for key, value in raw_meta.items():
        metadata[key] = int(value) if key in ("global_step", "epoch") and value.lstrip("-").isdigit() else value
    return state_dict, metadata


def _load_torch(path: str, mmap: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    try:
        try:
            obj = torch_load_safely(path, mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch_load_safely(path, False)  # legacy (non-zip) files cannot be memory-mapped
    except Exception as err:  # UnpicklingError, zip errors, EOF, ...: all mean "cannot use this file"
        raise CheckpointError(_describe_load_failure(path, err)) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    metadata = {k: v for k, v in obj.items() if k in ("global_step", "epoch")}
    state_dict = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors, metadata


def _readable_checkpoint_path(path: str) -> str:
    """``path`` (see ``in_cwd_or_repository``) if it is a non-empty file, else CheckpointError."""
    path = in_cwd_or_repository(os.fspath(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    return path


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a ``.safetensors`` or ``.ckpt``/``.pt``/``.pth``/``.bin`` file safely.

    Returns ``(state_dict, metadata)``: the tensors (unwrapped from a ``state_dict`` entry when
    present) and whatever of ``global_step`` / ``epoch`` (or safetensors metadata) the file has.
    Raises :class:`CheckpointError` with a one-line reason for a missing, corrupted or unsafe file.
    """
    path = _readable_checkpoint_path(path)
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    return _load_torch(path)


def checkpoint_tensor_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors, read without loading their data where the
    format allows (the safetensors header; a ``.ckpt`` memory-mapped), e.g. to tell which config
    fits a file before loading it for real. Raises :class:`CheckpointError` as ``load_checkpoint``."""
    path = _readable_checkpoint_path(path)
    if path.endswith(".safetensors"):
        return _safetensors_shapes(path)
    tensors, _ = _load_torch(path, mmap=True)
    return {key: tuple(value.shape) for key, value in tensors.items()}


def _safetensors_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(_describe_load_failure(path, err)) from None


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
