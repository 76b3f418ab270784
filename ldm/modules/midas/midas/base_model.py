"""Loading a standalone MiDaS weights file (original ``midas/base_model.py``)."""
from __future__ import annotations

import os
from typing import Union

import torch

from ldm.util.checkpoints import load_checkpoint
from ldm.util.state_dicts import load_state_dict_checked


class BaseModel(torch.nn.Module):
    def load(self, path: Union[str, os.PathLike]) -> None:
        """Load a released MiDaS ``.pt`` file (``dpt_hybrid-midas-501f0c75.pt``, ...) or a
        ``.safetensors`` copy strictly, through the project's safe checkpoint reader: nothing in
        the file runs code, and a file that does not fit says which keys differ
        (:class:`~ldm.util.errors.CheckpointMismatchError`). BatchNorm step counters
        (``num_batches_tracked``, which older files lack and evaluation never reads) may be absent."""
        state_dict, _ = load_checkpoint(path)
        for key, value in self.state_dict().items():
            if key.endswith("num_batches_tracked") and key not in state_dict:
                state_dict[key] = value
        load_state_dict_checked(self, state_dict, strict=True, verbose=False)
