"""Opt-in speed and memory switches of the scripts: attention slicing and ``torch.compile`` of the
UNet (the same results up to float rounding) and autoencoder tiling (overlapping tiles blended
linearly: close to, not equal to, the untiled images)."""
from __future__ import annotations

import argparse

import torch

from ldm.inference.errors import UsageError
from ldm.modules.attention import set_attention_slicing


def check_runtime_options(opt: argparse.Namespace) -> None:
    """Refuse a bad ``--attention-slicing`` before the model is loaded."""
    rows = opt.attention_slicing
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise UsageError(f"--attention-slicing must be a positive number of query rows, got {rows!r}")


def apply_runtime_options(model: torch.nn.Module, opt: argparse.Namespace) -> None:
    """Apply ``--attention-slicing``, ``--vae-tiling`` and ``--compile`` to a loaded model."""
    set_attention_slicing(model, opt.attention_slicing)
    if opt.vae_tiling:
        enable_tiling = getattr(model.first_stage_model, "enable_tiling", None)
        if enable_tiling is None:
            raise UsageError(f"--vae-tiling: the autoencoder {type(model.first_stage_model).__name__} "
                             "cannot encode/decode in tiles")
        enable_tiling()
    if opt.compile:
        wrapper = model.model
        wrapper.diffusion_model = compile_for_inference(wrapper.diffusion_model)


def compile_for_inference(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` for sampling. On CPU the weights are frozen into the graph (inductor's
    ``freezing``: constant-folded, convolution weights prepacked for oneDNN), which is what makes
    compiling pay off there; the module must then not be trained. The option is given to this
    compilation only, not set for the process."""
    if next(module.parameters()).device.type == "cpu":
        return torch.compile(module, options={"freezing": True})
    return torch.compile(module)
