"""LoRA files and textual-inversion embeddings on a loaded model: ``--lora FILE[:WEIGHT]`` and
``--embedding FILE[:TOKEN]`` on the scripts, ``ldm.load(..., lora=[...], embeddings=[...])`` in
Python. The specs are checked before the model is loaded; the files are applied after it is
loaded and before ``--compile`` (a compiled UNet would not see them). What was applied goes into
every image's parameters: ``LoRA: "name:weight, ..."`` (the file names without extension, at the
weight applied) and ``Embeddings: "token, ..."`` (those the image's prompts use)."""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Sequence, Tuple

import torch

from ldm.inference.errors import UsageError
from ldm.modules.encoders.textual_inversion import EmbeddingHandle, EmbeddingSpec, load_embedding, parse_embedding_spec
from ldm.modules.lora import LoraHandle, LoraSpec, apply_lora, parse_lora_spec
from ldm.util import in_cwd_or_repository

LORA_FLAG, EMBEDDING_FLAG = "--lora", "--embedding"


def _specs(opt: argparse.Namespace, name: str, flag: str) -> List[str]:
    """The values of a repeatable flag: a list (the scripts' ``append``), or from Python one value."""
    value = getattr(opt, name, None)
    if value is None:
        return []
    values = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in values):
        raise UsageError(f"{flag}: give file names (a string or a list of strings), got {value!r}")
    return [os.fspath(v) for v in values]


def _existing(path: str, flag: str, what: str) -> None:
    if not os.path.isfile(in_cwd_or_repository(path)):
        raise UsageError(f"{flag}: {what} file not found: {path}")


def lora_specs(opt: argparse.Namespace) -> List[LoraSpec]:
    """``opt.lora`` as (file, weight) pairs, each file found."""
    specs = [parse_lora_spec(text) for text in _specs(opt, "lora", LORA_FLAG)]
    for spec in specs:
        _existing(spec.path, LORA_FLAG, "LoRA")
    return specs


def embedding_specs(opt: argparse.Namespace) -> List[EmbeddingSpec]:
    """``opt.embedding`` as (file, token) pairs, each file found."""
    specs = [parse_embedding_spec(text) for text in _specs(opt, "embedding", EMBEDDING_FLAG)]
    for spec in specs:
        _existing(spec.path, EMBEDDING_FLAG, "embedding")
    return specs


def check_adapter_options(opt: argparse.Namespace) -> None:
    """Refuse a bad ``--lora`` or ``--embedding`` (a weight that is no number, a missing file)
    before the model is loaded."""
    lora_specs(opt)
    embedding_specs(opt)


def apply_adapters(model: torch.nn.Module, opt: argparse.Namespace) -> Tuple[List[LoraHandle], List[EmbeddingHandle]]:
    """Apply the LoRA files and load the embeddings that ``opt`` names, in their order; on an error
    what was applied already is taken off again, so the model is left as it was."""
    loras: List[LoraHandle] = []
    embeddings: List[EmbeddingHandle] = []
    try:
        for path, weight in lora_specs(opt):
            loras.append(apply_lora(model, path, weight))
        for path, token in embedding_specs(opt):
            embeddings.append(load_embedding(model, path, token))
    except BaseException:
        for handle in [*embeddings, *loras][::-1]:
            handle.remove()
        raise
    return loras, embeddings


def lora_parameters(loras: Sequence[LoraHandle]) -> Dict[str, str]:
    """``{"LoRA": "name:weight, ..."}`` of the LoRAs on the model (none: empty)."""
    applied = [f"{_name(handle.path)}:{handle.weight:g}" for handle in loras if handle.applied]
    return {"LoRA": ", ".join(applied)} if applied else {}


def embedding_parameters(embeddings: Sequence[EmbeddingHandle], *texts: str) -> Dict[str, str]:
    """``{"Embeddings": "token, ..."}`` of the loaded embeddings that ``texts`` (the prompt and the
    negative prompt) use (none: empty)."""
    used = [handle.token for handle in embeddings if any(handle.used_in(text) for text in texts if text)]
    return {"Embeddings": ", ".join(used)} if used else {}


def _name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
