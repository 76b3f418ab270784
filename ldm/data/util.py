"""Data-side helpers named by the SD 2 depth configs."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch


class AddMiDaS:
    """Adds ``midas_in``, the MiDaS network input for the depth-conditioned model, to a sample
    whose ``jpg`` is an HWC image in [-1, 1] (SAI ``ldm.data.util.AddMiDaS``)."""

    def __init__(self, model_type: str):
        from ldm.modules.midas.api import load_midas_transform  # depth models are optional

        self.transform = load_midas_transform(model_type)

    @staticmethod
    def pt2np(x: torch.Tensor) -> np.ndarray:
        """[-1, 1] tensor -> [0, 1] array."""
        return ((x + 1.0) * 0.5).detach().cpu().numpy()

    @staticmethod
    def np2pt(x: np.ndarray) -> torch.Tensor:
        """[0, 1] array -> [-1, 1] tensor."""
        return torch.from_numpy(x) * 2 - 1.0

    def __call__(self, sample: Dict) -> Dict:
        image = sample["jpg"]
        image = self.pt2np(image) if isinstance(image, torch.Tensor) else (np.asarray(image) + 1.0) * 0.5
        sample["midas_in"] = self.transform({"image": image})["image"]
        return sample
