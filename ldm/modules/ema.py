"""Exponential moving average of a model's parameters, stored as buffers so that EMA
checkpoints of the original code load unchanged (``model_ema.<param name without dots>``)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class LitEma(nn.Module):
    """EMA shadow of every trainable parameter of ``model``.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates when
    ``use_num_upates`` is set (the original's spelling), else it is constant.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.m_name2s_name = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.clone().detach().data)
        self.collected_params: list = []

    def reset_num_updates(self) -> None:
        del self.num_updates
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int))

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        decay = self.decay
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        one_minus_decay = 1.0 - decay
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            if param.requires_grad:
                shadow = shadows[self.m_name2s_name[name]]
                shadow.sub_(one_minus_decay * (shadow - param.to(shadow.dtype)))
            elif name in self.m_name2s_name:
                raise RuntimeError(f"parameter {name} was trainable when the EMA was created")

    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into ``model``'s trainable parameters."""
        shadows = dict(self.named_buffers())
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.data.copy_(shadows[self.m_name2s_name[name]].data)
            elif name in self.m_name2s_name:
                raise RuntimeError(f"parameter {name} was trainable when the EMA was created")

    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Keep a copy of ``parameters`` to put back with :meth:`restore`."""
        self.collected_params = [param.clone() for param in parameters]

    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Put back the parameters saved by :meth:`store` (after validating with EMA weights)."""
        for c_param, param in zip(self.collected_params, parameters):
            param.data.copy_(c_param.data)
