"""Images for the shapes evaluations, made by the one generation path (:mod:`ldm.inference.api`),
so that the figures in docs/SHAPES.md come from what users run: a prompt list with one input per
prompt, image k seeded ``seed + k`` whatever batch it is drawn in, 8-bit pixels as the scripts
write them."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ldm.inference.api import Pipeline


def as_arrays(images: List[Image.Image]) -> np.ndarray:
    """PIL images -> ``(N, H, W, 3)`` uint8."""
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def txt2img(pipe: Pipeline, prompts: Sequence[str], seed: int = 0, steps: int = 20, scale: float = 5.0,
            batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 images, one per prompt."""
    return as_arrays(pipe(list(prompts), n=1, batch_size=batch_size, seed=seed, steps=steps, scale=scale,
                          sampler=sampler))


def inpaint(pipe: Pipeline, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], seed: int = 0,
            steps: int = 20, scale: float = 5.0, batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """Repaint ``masks`` (N, H, W), 1 = repaint, of ``images`` (N, H, W, 3) in [0, 1] following ``prompts``."""
    return as_arrays(pipe(list(prompts), image=list(images), mask=list(masks), n=1, batch_size=batch_size,
                          seed=seed, steps=steps, scale=scale, sampler=sampler))


def depth2img(pipe: Pipeline, images: np.ndarray, depths: np.ndarray, prompts: Sequence[str], seed: int = 0,
              steps: int = 20, scale: float = 5.0, batch_size: int = 16) -> np.ndarray:
    """Images following depth maps ``depths`` (N, H, W) and ``prompts`` from pure noise (strength 1;
    ``images`` only give the size), with DDIM as depth2img samples."""
    return as_arrays(pipe(list(prompts), image=list(images), depth=list(depths), strength=1.0, n=1,
                          batch_size=batch_size, seed=seed, steps=steps, scale=scale))


def upscale(pipe: Pipeline, low_res: np.ndarray, prompts: Sequence[str], noise_level: int = 20, seed: int = 0,
            steps: int = 20, scale: float = 5.0, batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """x4 upscaling of ``low_res`` (N, h, w, 3) in [0, 1] following ``prompts``."""
    return as_arrays(pipe(list(prompts), image=list(low_res), noise_level=noise_level, n=1,
                          batch_size=batch_size, seed=seed, steps=steps, scale=scale, sampler=sampler))


def class_samples(pipe: Pipeline, labels: Sequence[int], seed: int = 0, steps: int = 20, scale: float = 3.0,
                  batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 images of a class-conditional model, one per label (sample_class.py's task)."""
    return as_arrays(pipe(classes=list(labels), n=1, batch_size=batch_size, seed=seed, steps=steps, scale=scale,
                          sampler=sampler))


def unconditional_samples(pipe: Pipeline, count: int, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                          eta: float = 0.0, batch_size: int = 16) -> np.ndarray:
    """``(count, H, W, 3)`` uint8 samples of an unconditional model (sample_diffusion.py's task)."""
    return as_arrays(pipe(n=count, batch_size=batch_size, seed=seed, steps=steps, sampler=sampler, eta=eta))


def sampling_settings(steps: int, scale: float, sampler: str, seed: int, extra: Optional[Dict] = None) -> Dict:
    """The settings printed with every table."""
    return {"sampler": sampler, "steps": steps, "guidance": scale, "seed": seed, **(extra or {})}
