"""The SD 1.x CLIP text model, laid out as Stable Diffusion 1.x checkpoints store it.

SD 1.x checkpoints were written with transformers 4.19: ``CLIPTextModel`` had a ``text_model`` level
and saved ``embeddings.position_ids`` (int64 ``[1, 77]``) as a persistent buffer. transformers 5 has
neither. Whatever version is installed, the modules built here have the state-dict keys
``text_model.embeddings.position_ids, text_model.embeddings.token_embedding.weight, ...`` in the
original order, and load checkpoints with or without ``position_ids`` (and with transformers-5 keys).

Known hub names select a built-in config and our own text model of the same layout
(:mod:`ldm.modules.encoders.clip_text_tower`; no download, and transformers' modeling code is not
imported); a local directory is loaded into transformers' ``CLIPTextModel`` with
``from_pretrained(..., local_files_only=True)``.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.encoders.clip_text_tower import ClipTextConfig, ClipTextModel

# Text configs of the public OpenAI CLIP checkpoints on the Hugging Face hub (their config.json).
_COMMON = dict(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
               eos_token_id=2)
_LARGE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768)
_BASE = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
             projection_dim=512)
KNOWN_TEXT_CONFIGS = {
    "openai/clip-vit-large-patch14": _LARGE,
    "openai/clip-vit-large-patch14-336": _LARGE,
    "openai/clip-vit-base-patch32": _BASE,
    "openai/clip-vit-base-patch16": _BASE,
}
_TEXT_MODEL_CHILDREN = ("embeddings.", "encoder.", "final_layer_norm.")


def load_offline(cls, name: str, what: str):
    """``cls.from_pretrained(name)`` from a local directory or the local Hugging Face cache only."""
    try:
        return cls.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OSError(f"{what} {name!r} is neither a local directory with its files nor in the local Hugging "
                      f"Face cache, and nothing is downloaded: save it once and pass its directory ({detail})") from err


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model")


def load_tokenizer_offline(cls, name: str, what: str):
    """Like :func:`load_offline`, but first makes sure tokenizer files exist: transformers 5 quietly
    builds an almost empty tokenizer (garbage ids) when it finds none."""
    files = tuple(getattr(cls, "vocab_files_names", {}).values()) or TOKENIZER_FILES
    if not any(_file_available(name, f) for f in files):
        raise OSError(f"{what} {name!r}: none of {', '.join(files)} is in that local directory or in the local "
                      "Hugging Face cache, and nothing is downloaded: save the tokenizer once and pass its directory")
    return load_offline(cls, name, what)


def _file_available(name: str, filename: str) -> bool:
    if os.path.isdir(name):
        return os.path.isfile(os.path.join(name, filename))
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, filename), str)
    except ValueError:  # not a valid repository name
        return False


def text_config(version: str) -> ClipTextConfig:
    """The built-in text config of a known hub name."""
    if version not in KNOWN_TEXT_CONFIGS:
        raise ValueError(f"unknown CLIP text model {version!r}: pass a local directory or one of "
                         f"{', '.join(KNOWN_TEXT_CONFIGS)}")
    return ClipTextConfig(**_COMMON, **KNOWN_TEXT_CONFIGS[version])


def build_text_model_and_tokenizer(version: str) -> Tuple[nn.Module, Optional[object]]:
    """(text model with the SD 1.x layout, tokenizer) for a known hub name (our text model; tokenizer
    None: the shipped CLIP vocabulary) or a local directory (transformers' ``CLIPTextModel`` and the
    directory's ``CLIPTokenizer``). A diffusers-style directory (``text_encoder/`` and ``tokenizer/``
    subfolders) works too."""
    if not os.path.isdir(version):
        return with_original_layout(ClipTextModel(text_config(version))), None
    from transformers import CLIPTextModel, CLIPTokenizer

    model = load_offline(CLIPTextModel, _subfolder(version, "text_encoder"), "CLIP text model")
    tokenizer = load_tokenizer_offline(CLIPTokenizer, _subfolder(version, "tokenizer"), "CLIP tokenizer")
    return with_original_layout(model), tokenizer


def _subfolder(folder: str, name: str) -> str:
    sub = os.path.join(folder, name)
    return sub if os.path.isdir(sub) else folder


class TextModelLevel(nn.Module):
    """Holds a transformers-5 ``CLIPTextModel`` as ``text_model``, the level transformers 4.x had,
    and forwards calls to it."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model

    @property
    def config(self):
        return self.text_model.config

    def forward(self, *args, **kwargs):
        return self.text_model(*args, **kwargs)


def with_original_layout(model: nn.Module) -> nn.Module:
    """``model`` (ours, or a ``CLIPTextModel`` of any transformers version) with a ``text_model``
    level, a persistent ``position_ids`` buffer, and load hooks for checkpoints of other layouts."""
    outer = model if hasattr(model, "text_model") else TextModelLevel(model)
    embeddings = outer.text_model.embeddings
    embeddings.register_buffer("position_ids", embeddings.position_ids.clone(), persistent=True)
    embeddings.register_load_state_dict_pre_hook(_complete_position_ids)
    outer.register_load_state_dict_pre_hook(_add_text_model_level)
    return outer


def _add_text_model_level(module, state_dict, prefix, *args) -> None:
    """Accept keys written without the ``text_model`` level (transformers >= 5)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.startswith(_TEXT_MODEL_CHILDREN) and prefix + "text_model." + rest not in state_dict:
            state_dict[prefix + "text_model." + rest] = state_dict.pop(key)


def _complete_position_ids(module, state_dict, prefix, *args) -> None:
    """Checkpoints from transformers >= 4.31 lack ``position_ids``: use 0, 1, ..., n-1. Some
    converted ones hold them as floats that are slightly off (e.g. 76.9999): round them."""
    key = prefix + "position_ids"
    if key not in state_dict:
        state_dict[key] = torch.arange(module.position_ids.shape[-1]).unsqueeze(0)
    else:
        state_dict[key] = torch.round(state_dict[key].float()).to(torch.long)
