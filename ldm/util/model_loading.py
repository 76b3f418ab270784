"""The one ``load_model_from_config(config, ckpt, device)`` every script and tool uses."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ldm.util.checkpoints import load_checkpoint
from ldm.util.config import instantiate_from_config
from ldm.util.devices import pick_device
from ldm.util.state_dicts import load_state_dict_checked, select_ema_weights


def load_model_from_config(config, ckpt: Optional[str], device=None, verbose: bool = True,
                           ema: Optional[bool] = None, strict: bool = True) -> nn.Module:
    """Build the model of ``config`` (a full config or its ``model`` node), load ``ckpt`` into it,
    move it to ``device`` (auto-selected when None) and set eval mode.

    Mismatches are reported per component in plain words; with ``strict`` any missing, unused
    or mis-shaped tensor raises :class:`~ldm.util.errors.CheckpointMismatchError` (a file that
    cannot be read, :class:`~ldm.util.errors.CheckpointError`). ``ema=True`` loads the EMA shadows
    into the UNet (when the file has them), ``ema=False`` or None the plain weights.
    """
    model_config = config.model if "model" in config else config
    model = instantiate_from_config(model_config)
    if ckpt is not None:
        state_dict, metadata = load_checkpoint(ckpt)
        if verbose and "global_step" in metadata:
            print(f"Global Step: {metadata['global_step']}")
        if ema:
            state_dict = select_ema_weights(state_dict, model)
        elif not any(k.startswith("model_ema.") for k in model.state_dict()):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("model_ema.")}
        load_state_dict_checked(model, state_dict, strict=strict, verbose=verbose)
    model = model.to(pick_device(device) if not isinstance(device, torch.device) else device)
    model.eval()
    return model
