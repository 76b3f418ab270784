"""Sample grids of training runs: grids from :mod:`ldm.util.images`, written as PNG with the
package's one image writer (:mod:`ldm.inference.images`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ldm.inference.images import save_png
from ldm.util.images import make_grid

__all__ = ["make_grid", "grid_to_uint8", "save_log_image"]


def grid_to_uint8(grid: torch.Tensor, rescale: bool = True) -> np.ndarray:
    """(C, H, W) in [-1, 1] (``rescale``) or [0, 1] -> HWC uint8 (floor, as the original)."""
    if rescale:
        grid = (grid + 1.0) / 2.0
    array = grid.detach().float().cpu().permute(1, 2, 0).numpy()
    return (np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)


def save_log_image(array: np.ndarray, path: str) -> bool:
    """Write a training log image, creating its folder; an image already logged under that name
    (a resumed run logging the same step again) is kept, not replaced. Returns whether it wrote."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        save_png(array, Path(path))
    except FileExistsError:
        return False
    return True
