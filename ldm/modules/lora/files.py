"""Reading LoRA files: ``.safetensors`` only (LoRA files are never pickles), through the one
checkpoint reader (:func:`ldm.util.load_checkpoint`: plain dense finite tensors, nothing run),
and the ``FILE[:WEIGHT]`` form a command line gives them in."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, NamedTuple

import torch

from ldm.util import CheckpointError, in_cwd_or_repository, load_checkpoint
from ldm.util.checkpoint_files import SAFETENSORS, sniff_format

# The safetensors metadata entry where diffusers keeps each component's LoraConfig (r, lora_alpha, ...).
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"


class LoraError(CheckpointError):
    """A LoRA file that cannot be read or does not fit the model; the message is one line."""


class LoraFile(NamedTuple):
    """A LoRA file's tensors and its safetensors metadata (strings; diffusers' adapter config
    decoded from JSON under :data:`DIFFUSERS_METADATA_KEY`)."""
    path: str
    state_dict: Dict[str, torch.Tensor]
    metadata: Dict[str, Any]


class LoraSpec(NamedTuple):
    """A LoRA as a command line names it: a file and the weight to apply it with."""
    path: str
    weight: float


def read_lora_file(path: str) -> LoraFile:
    """The tensors and metadata of a ``.safetensors`` LoRA file; :class:`LoraError` with a one-line
    reason for a missing file, a torch pickle, or a file the checkpoint reader refuses."""
    path = os.fspath(path)
    resolved = in_cwd_or_repository(path)
    if not os.path.isfile(resolved):
        raise LoraError(f"LoRA file not found: {path}")
    try:
        if os.path.getsize(resolved) and sniff_format(resolved) != SAFETENSORS:
            raise LoraError(f"{path} is not a .safetensors file; LoRA files are read only as safetensors "
                            "(never as pickles): convert it with a tool you trust")
        state_dict, metadata = load_checkpoint(resolved)
    except LoraError:
        raise
    except CheckpointError as err:
        raise LoraError(str(err)) from None
    return LoraFile(path, state_dict, _decoded_metadata(path, metadata))


def _decoded_metadata(path: str, metadata: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(metadata)
    raw = out.get(DIFFUSERS_METADATA_KEY)
    if isinstance(raw, str):
        try:
            out[DIFFUSERS_METADATA_KEY] = json.loads(raw)
        except ValueError:
            raise LoraError(f"{path}: its {DIFFUSERS_METADATA_KEY} metadata is not valid JSON") from None
        if not isinstance(out[DIFFUSERS_METADATA_KEY], dict):
            raise LoraError(f"{path}: its {DIFFUSERS_METADATA_KEY} metadata is not a JSON object")
    return out


def load_lora_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` LoRA file, as the file names them (see :func:`read_lora_file`)."""
    return read_lora_file(path).state_dict


def parse_lora_spec(spec: str) -> LoraSpec:
    """``"style.safetensors:0.7"`` -> ``LoraSpec("style.safetensors", 0.7)``; without ``:WEIGHT``
    the weight is 1. Only what follows the last ``:`` can be a weight, so a path that holds a
    colon (``C:\\loras\\x.safetensors``) stays whole; a tail that is no number and no part of a
    path (``x.safetensors:strong``) is an error rather than a file name."""
    path, sep, tail = spec.rpartition(":")
    if not sep:
        path, weight = spec, 1.0
    elif _is_number(tail):
        weight = float(tail)
        if not math.isfinite(weight):
            raise LoraError(f"--lora {spec}: the weight after ':' must be a finite number, got {tail}")
    elif os.path.isfile(in_cwd_or_repository(spec)) or any(c in tail for c in "./\\"):
        path, weight = spec, 1.0
    else:
        raise LoraError(f"--lora {spec}: the weight after ':' must be a number, got {tail!r}")
    if not path:
        raise LoraError(f"--lora {spec}: give a LoRA file, as FILE or FILE:WEIGHT")
    return LoraSpec(path, weight)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
