"""A first stage that does nothing, for diffusion directly in pixel space."""
from __future__ import annotations

import torch.nn as nn


class IdentityFirstStage(nn.Module):
    """A first stage that does nothing (diffusion directly in pixel space)."""

    def __init__(self, *args, vq_interface: bool = False, **kwargs):
        self.vq_interface = vq_interface
        super().__init__()

    def encode(self, x, *args, **kwargs):
        return x

    def decode(self, x, *args, **kwargs):
        return x

    def quantize(self, x, *args, **kwargs):
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x, *args, **kwargs):
        return x
