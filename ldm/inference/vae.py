"""``--vae FILE`` on the scripts, ``ldm.load(..., vae=FILE)`` in Python: replace the model's
autoencoder weights with those of another file after the model is loaded, as users of Stable
Diffusion swap in Stability AI's fine-tuned ``vae-ft-mse-840000-ema-pruned`` (and as AUTOMATIC1111's
``--vae-path`` does). The file holds an autoencoder state dict (``encoder.*``, ``decoder.*``,
``quant_conv.*``, ``post_quant_conv.*``; a Lightning checkpoint's ``state_dict``, with its
training-only ``loss.*`` keys and EMA counters, also works) or a whole latent-diffusion checkpoint, whose
``first_stage_model.*`` keys are taken. It must fit the model's autoencoder exactly: a missing,
unexpected or differently shaped key is a one-line error that names it in the checkpoint loader's
words. The images' parameters record ``VAE hash: <10 hex digits>, VAE: <file name>`` (AUTOMATIC1111's fields)."""
from __future__ import annotations

import argparse
import functools
import os
from typing import Dict, Mapping, Optional

import torch

from ldm.inference.errors import UsageError
from ldm.inference.loading import model_hash
from ldm.util import in_cwd_or_repository
from ldm.util.checkpoints import load_checkpoint
from ldm.util.state_dicts import compare_state_dict

VAE_FLAG = "--vae"
_WHOLE_MODEL_PREFIX = "first_stage_model."
_AUTOENCODER_PARTS = ("encoder.", "decoder.")
_TRAINING_ONLY_PREFIX = "loss."   # the autoencoder's loss (LPIPS, discriminator) in a training checkpoint
_DIFFUSERS_MARK = "down_blocks."   # diffusers' AutoencoderKL names its levels down_blocks/up_blocks
_EMA_COUNTERS = ("model_ema.decay", "model_ema.num_updates")   # left in some VAE files; AUTOMATIC1111 drops them too


def vae_path(opt: argparse.Namespace) -> Optional[str]:
    """``opt.vae`` (None: keep the model's autoencoder), the file checked to exist."""
    value = getattr(opt, "vae", None)
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{VAE_FLAG}: give a file name, got {value!r}")
    path = os.fspath(value)
    if not os.path.isfile(in_cwd_or_repository(path)):
        raise UsageError(f"{VAE_FLAG}: autoencoder file not found: {path}")
    return path


def autoencoder_state(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The autoencoder's tensors of a VAE file or of a whole latent-diffusion checkpoint."""
    if any(key.startswith(_WHOLE_MODEL_PREFIX) for key in state_dict):
        return {key[len(_WHOLE_MODEL_PREFIX):]: value for key, value in state_dict.items()
                if key.startswith(_WHOLE_MODEL_PREFIX)}
    return {key: value for key, value in state_dict.items()
            if not key.startswith(_TRAINING_ONLY_PREFIX) and key not in _EMA_COUNTERS}


def load_vae(model: torch.nn.Module, path: str) -> None:
    """Copy the autoencoder weights of ``path`` into ``model.first_stage_model`` (each cast to the
    dtype and device of the weight it replaces); raises UsageError when they do not fit it."""
    autoencoder = getattr(model, "first_stage_model", None)
    if autoencoder is None or not any(True for _ in autoencoder.parameters()):
        raise UsageError(f"{VAE_FLAG}: this model has no autoencoder to replace (it samples in pixel space)")
    state = autoencoder_state(load_checkpoint(in_cwd_or_repository(path))[0])
    if not any(key.startswith(_AUTOENCODER_PARTS) for key in state):
        raise UsageError(f"{VAE_FLAG}: {path} holds no autoencoder weights (no encoder.*, decoder.* or "
                         "first_stage_model.* tensors)")
    problem = _mismatch(model, state)
    if problem and any(_DIFFUSERS_MARK in key for key in state):
        raise UsageError(f"{VAE_FLAG}: {path} is a VAE in diffusers' layout (encoder.down_blocks...); give one in the "
                         "original layout (encoder.down...), as vae-ft-mse-840000-ema-pruned.safetensors is")
    if problem:
        raise UsageError(f"{VAE_FLAG}: {path} does not fit the model: {problem}")
    with torch.no_grad():
        autoencoder.load_state_dict(state, strict=True)


def _mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """How ``state`` fails to fit ``model.first_stage_model``, in the checkpoint loader's words ("" if
    it fits); every weight outside the autoencoder counts as loaded already."""
    outside = tuple(key for key in model.state_dict() if not key.startswith(_WHOLE_MODEL_PREFIX))
    report = compare_state_dict(model, {_WHOLE_MODEL_PREFIX + key: value for key, value in state.items()},
                                preloaded_prefixes=outside)
    return "" if report.ok else "; ".join(report.lines())


def vae_parameters(path: Optional[str]) -> Dict[str, str]:
    """``{"VAE hash": ..., "VAE": file name}`` of the autoencoder file used (none: empty)."""
    if path is None:
        return {}
    resolved = os.path.abspath(in_cwd_or_repository(path))
    stat = os.stat(resolved)
    return {"VAE hash": _file_hash(resolved, stat.st_size, stat.st_mtime_ns), "VAE": os.path.basename(resolved)}


@functools.lru_cache(maxsize=8)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    """A1111's 10-digit hash of a file, read once per version of it (an SD VAE is 335 MB)."""
    return model_hash(path)
