"""Image grids for training logs (torchvision's ``make_grid`` layout, without torchvision)."""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int = 4, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile a (B, C, H, W) batch into one (C, H', W') image, ``nrow`` images per row, each framed
    by ``padding`` pixels of ``pad_value``. Single-channel batches become 3-channel."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = int(math.ceil(count / columns))
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((channels, rows * cell_h + padding, columns * cell_w + padding), pad_value)
    for index in range(count):
        top = (index // columns) * cell_h + padding
        left = (index % columns) * cell_w + padding
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


def grid_to_uint8(grid: torch.Tensor, rescale: bool = True) -> np.ndarray:
    """(C, H, W) in [-1, 1] (``rescale``) or [0, 1] -> HWC uint8 (floor, as the original)."""
    if rescale:
        grid = (grid + 1.0) / 2.0
    array = grid.detach().float().cpu().permute(1, 2, 0).numpy()
    return (np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path)
