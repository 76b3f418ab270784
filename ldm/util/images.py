"""Images made for viewing: grids of a batch, and captions rendered as images (training logs,
script grids). Written here because torchvision cannot be used."""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import torch


def make_grid(images: torch.Tensor, nrow: int = 4, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """Tile ``[N, C, H, W]`` into one ``[C, H', W']`` image, ``nrow`` images per row, with
    ``padding`` pixels of ``pad_value`` around each (torchvision's ``make_grid`` layout).
    Single-channel batches become 3-channel."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((channels, rows * cell_h + padding, columns * cell_w + padding), pad_value)
    for index in range(count):
        top = (index // columns) * cell_h + padding
        left = (index % columns) * cell_w + padding
        grid[:, top:top + height, left:left + width] = images[index]
    return grid


def log_txt_as_img(wh: Tuple[int, int], xc: List[str], size: int = 10) -> torch.Tensor:
    """Render captions as images (B, 3, H, W) in [-1, 1], wrapped at 40 chars per 256 px."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(1, int(size))
    images = []
    chars_per_line = int(40 * (wh[0] / 256))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        font = ImageFont.load_default()
    for caption in xc:
        canvas = Image.new("RGB", wh, color="white")
        draw = ImageDraw.Draw(canvas)
        text = str(caption)
        lines = "\n".join(text[i:i + chars_per_line] for i in range(0, len(text), chars_per_line))
        draw.text((0, 0), lines, fill="black", font=font)
        arr = np.array(canvas).transpose(2, 0, 1) / 127.5 - 1.0
        images.append(arr)
    return torch.tensor(np.stack(images), dtype=torch.float32)
