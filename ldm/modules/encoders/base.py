"""What every conditioning encoder shares: ``encode``, freezing, and where its inputs go."""
from __future__ import annotations

import itertools
from typing import Optional, Union

import torch
import torch.nn as nn

from ldm.modules.freezing import disabled_train  # noqa: F401  (the original's name, served here too)


class AbstractEncoder(nn.Module):
    """Base of the conditioning encoders. ``encode`` maps a conditioning input (prompts, images,
    tokens) to what the denoiser reads.

    ``device``: where inputs such as token ids are sent -- the device given to the constructor (or
    assigned later, as SAI's txt2img does), else the device of the encoder's weights.
    ``freeze()``: eval mode and no gradients; a frozen encoder stays in eval mode on ``.train()``.
    """

    frozen = False
    _device: Optional[torch.device] = None

    def encode(self, *args, **kwargs):
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        if self._device is not None:
            return self._device
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    @device.setter
    def device(self, value: Optional[Union[str, torch.device]]) -> None:
        self._device = None if value is None else torch.device(value)

    def freeze(self) -> None:
        self.frozen = True
        self.eval()
        for param in self.parameters():
            param.requires_grad = False

    def train(self, mode: bool = True):
        return super().train(mode and not self.frozen)


class IdentityEncoder(AbstractEncoder):
    """Passes the conditioning through unchanged."""

    def encode(self, x):
        return x
