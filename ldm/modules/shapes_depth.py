"""The depth estimator of the shapes depth-to-image model (``checkpoints/shapes-depth.yaml``):
in the shapes world depth follows from the image, so the MiDaS network that SD 2 depth uses is
replaced by the renderer's own rule, with no weights."""
from __future__ import annotations

import torch
import torch.nn as nn

from ldm.data.shapes import FLOOR_DISPARITY, OBJECT_DISPARITY


class ShapesDepthEstimator(nn.Module):
    """(B, 3, H, W) images in [-1, 1] -> (B, 1, H, W) disparity (nearer = larger, as MiDaS):
    the floor's ramp from top to bottom, plus ``OBJECT_DISPARITY`` on saturated (object) pixels.
    The torch twin of :func:`ldm.data.shapes.estimate_disparity`."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        rgb = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        maximum, minimum = rgb.amax(dim=1, keepdim=True), rgb.amin(dim=1, keepdim=True)
        saturation = (maximum - minimum) / maximum.clamp_min(1e-6)
        coverage = ((saturation - 0.2) / 0.4).clamp(0.0, 1.0)
        floor = torch.linspace(*FLOOR_DISPARITY, images.shape[2], device=images.device)
        return floor.view(1, 1, -1, 1) + OBJECT_DISPARITY * coverage
