"""A whole transformers CLIP model (image and text towers) from a local directory, nothing downloaded:
the one loader of CLIP guidance (``--guide-clip-model``) and the CLIP score (``scripts/evaluate.py --clip``)."""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple


class ClipDirectoryError(OSError):
    """Why a directory gave no CLIP model: ``reason`` (one line), after the directory in ``str()``."""

    def __init__(self, directory: str, reason: str):
        super().__init__(f"{directory}: {reason}")
        self.reason = reason


def load_local_clip(directory: str) -> Tuple[Any, Any]:
    """``(CLIPModel, tokenizer)`` of a transformers CLIP directory (``save_pretrained``), in float32
    and eval mode: the directory's tokenizer, or the shipped CLIP vocabulary when it has no tokenizer
    files (every OpenAI CLIP uses it). Raises :class:`ClipDirectoryError` (an OSError) with a one-line
    reason for a missing directory, one that does not hold a CLIP model, or files that cannot be read."""
    from transformers import CLIPModel, CLIPTokenizer

    from ldm.modules.encoders.clip_text import TOKENIZER_FILES, load_offline, load_tokenizer_offline
    from ldm.modules.encoders.tokenizer import build_clip_tokenizer
    from ldm.util.errors import first_line

    if not os.path.isdir(directory):
        raise ClipDirectoryError(directory, "no such directory (a local transformers CLIP model, saved with "
                                            "save_pretrained; nothing is downloaded)")
    model_type = _config_model_type(directory)
    if model_type != "clip":
        raise ClipDirectoryError(directory, f"not a transformers CLIP model directory (its config.json has "
                                            f"model_type {model_type!r}, not 'clip'; nothing is downloaded)")
    try:
        clip = load_offline(CLIPModel, directory, "CLIP model")
        has_tokenizer = any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES)
        tokenizer = load_tokenizer_offline(CLIPTokenizer, directory, "CLIP tokenizer") if has_tokenizer \
            else build_clip_tokenizer(int(clip.config.text_config.max_position_embeddings))
    except (OSError, ValueError) as err:
        raise ClipDirectoryError(directory, first_line(err)) from None
    return clip.float().eval(), tokenizer


def _config_model_type(directory: str) -> Optional[str]:
    """``model_type`` of the directory's config.json (None when it has none or cannot be read)."""
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None
