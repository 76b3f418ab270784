"""Frozen submodules: kept in eval mode whatever their parent's ``train()``/``eval()`` switches
say (the original's ``disabled_train``), and optionally without gradients."""
from __future__ import annotations

import types

import torch.nn as nn


def disabled_train(self, mode: bool = True):
    """Stand-in for ``nn.Module.train`` on frozen submodules, so that train/eval switches of the
    parent never change their mode."""
    return self


def keep_in_eval_mode(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode for good: its ``train`` no longer changes anything."""
    module = module.eval()
    module.train = types.MethodType(disabled_train, module)
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """Keep ``module`` in eval mode for good and stop its gradients."""
    module = keep_in_eval_mode(module)
    for param in module.parameters():
        param.requires_grad = False
    return module
