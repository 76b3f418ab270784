"""Latent diffusion / Stable Diffusion: original configs and checkpoints, offline, safe loading, any
device. ``ldm.load(task)`` gives the one generation path (see :mod:`ldm.inference.api`); it is
imported on first use, so ``import ldm`` stays cheap."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ldm.inference.api import Pipeline

__all__ = ["load"]


def load(task: str = "txt2img", *args: Any, **kwargs: Any) -> "Pipeline":
    """``ldm.load(task, ckpt=None, config=None, device="auto", precision="autocast", ema=None, lora=None,
    embeddings=None)``:
    the model of ``task`` (txt2img, img2img, inpaint, depth2img, upscale, unclip) ready to make images;
    see :func:`ldm.inference.api.load`."""
    from ldm.inference.api import load as load_pipeline

    return load_pipeline(task, *args, **kwargs)
