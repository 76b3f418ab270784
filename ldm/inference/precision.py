"""Numeric precision of a run: ``torch.autocast`` on the model's device, never a hard-coded one.

``--precision autocast`` (the originals' default) means fp16 autocast on CUDA and MPS, bf16 with
``--bf16``. On a CPU with native bfloat16 arithmetic (AMX-BF16 or AVX512-BF16, see
:func:`cpu_has_native_bf16`) it means bf16 autocast, as the Stability script's ``autocast`` does
on a CPU: the UNet runs about 3x faster there, the attention scores and softmax stay in float32
(torch's CPU attention kernels accumulate in float32, the ``ATTN_PRECISION=fp32`` convention) and
the autoencoder decodes in float32 (:func:`float32_scope`). On other CPUs bf16 is emulated and
slower, so ``autocast`` runs in fp32 there unless ``--bf16`` asks for it. ``--precision full`` is
fp32 everywhere.

Under bf16 autocast on a CPU the UNet's and the text encoder's linear and convolution weights are
stored in bf16 from the start (:func:`autocast_weight_retyper`, cast once from the file as the
model loads): autocast would cast exactly these tensors to bf16 at their first use and keep the
copy beside the float32 one, so the outputs are bit for bit the same and the float32 copy is never
made. Norms, embeddings and the autoencoder stay in float32.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, ContextManager, Iterator, Optional

import torch
import torch.nn as nn

from ldm.inference.errors import UsageError

# "1" or "0" forces the answer of cpu_has_native_bf16 (tests, or a user who knows better).
CPU_BF16_ENV = "LDM_CPU_BF16"
# /proc/cpuinfo flags of the instructions that compute in bfloat16 natively.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX-BF16 or AVX512-BF16): the
    ``LDM_CPU_BF16`` environment variable (``1``/``0``) when set, else the flags of
    ``/proc/cpuinfo`` (False where there is none)."""
    override = os.environ.get(CPU_BF16_ENV)
    if override is not None:
        if override not in ("0", "1"):
            raise UsageError(f"{CPU_BF16_ENV} must be 0 or 1, got {override!r}")
        return override == "1"
    return _cpuinfo_has_native_bf16()


@functools.lru_cache(maxsize=None)
def _cpuinfo_has_native_bf16(path: str = "/proc/cpuinfo") -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as info:
            text = info.read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(device: torch.device, precision: str, bf16: bool) -> Optional[torch.dtype]:
    """The autocast dtype for this device and these flags, or None for plain fp32."""
    if precision == "full":
        if bf16:
            raise UsageError("--bf16 needs --precision autocast (it selects the autocast dtype)")
        return None
    if bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--bf16 was asked for, but this CUDA device does not support bfloat16")
        return torch.bfloat16
    if device.type in ("cuda", "mps"):
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_scope(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def float32_scope(device: torch.device) -> ContextManager:
    """Autocast switched off on a CPU, where autocast is bf16: the autoencoder decodes in float32
    there (bf16 costs visible colour banding and gains little in the decoder). Elsewhere a no-op:
    the originals decode under fp16 autocast on a GPU, which halves its memory."""
    if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


# Layers whose forward only hands its weight and bias to an op CPU autocast runs in the lower
# precision (linear, convolution). Exact types: a subclass may use its weights otherwise.
AUTOCAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def autocast_weight_retyper(device: torch.device, dtype: Optional[torch.dtype]
                            ) -> Optional[Callable[[nn.Module], None]]:
    """For bf16 autocast on a CPU, the function that stores a model's autocast weights in bf16
    (:func:`store_autocast_weights`, given to the loader so that each is cast once from the file);
    None otherwise (float32, or another device: the weights stay as the file and config give them)."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    return functools.partial(store_autocast_weights, dtype=dtype)


def store_autocast_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights and biases of the :data:`AUTOCAST_LAYERS` of ``model``'s UNet and text
    encoder to ``dtype`` in place (parameters on the meta device only change dtype); returns how
    many layers. These are the tensors autocast to ``dtype`` would cast at each use."""
    count = 0
    for layer in _autocast_layers(model):
        layer.to(dtype)
        count += 1
    return count


def _autocast_layers(model: nn.Module) -> Iterator[nn.Module]:
    parts = (getattr(getattr(model, "model", None), "diffusion_model", None), getattr(model, "cond_stage_model", None))
    for part in parts:
        if isinstance(part, nn.Module):
            yield from (module for module in part.modules() if type(module) in AUTOCAST_LAYERS)


def check_weights_fit_precision(weights_dtype: Optional[torch.dtype], dtype: Optional[torch.dtype]) -> None:
    """A model whose UNet weights were stored in ``weights_dtype`` for autocast runs only under
    that autocast: anything else would compute in lower precision than asked, silently."""
    if weights_dtype is not None and dtype != weights_dtype:
        asked = "float32" if dtype is None else str(dtype).replace("torch.", "")
        raise UsageError(f"this model was loaded for {str(weights_dtype).replace('torch.', '')} autocast (its UNet "
                         f"weights are stored in it) and cannot run in {asked}: load it again with "
                         "precision='full' (--precision full) for float32")
