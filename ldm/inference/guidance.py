"""Loss-guidance presets: ``cond_fn``s for the samplers' loss-guidance hook
(``ldm.models.diffusion.sampling_util.LossGuidance``)."""
from __future__ import annotations

from typing import Sequence

import torch

from ldm.models.diffusion.sampling_util import CondFn


def color_guidance(model: torch.nn.Module, rgb: Sequence[float], scale: float) -> CondFn:
    """The colour loss of the diffusers guidance tutorial: ``scale`` times the mean squared
    distance of the decoded image's pixels (in [0, 1]) to ``rgb`` (each in [0, 1]), per image.
    The predicted x0 is decoded with the first stage (a pixel model uses it as the image) and
    the gradient runs back through the decoder to the latent x; the cond_fn returns minus that
    gradient (a log-probability-like objective)."""
    if len(rgb) != 3 or not all(0. <= c <= 1. for c in rgb):
        raise ValueError(f"the guide colour must be three numbers in [0, 1], got {list(rgb)}")

    def cond_fn(x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        image = model.decode_first_stage(denoised) if hasattr(model, "decode_first_stage") else denoised
        image = (image.float() + 1) / 2
        target = torch.tensor(list(rgb), device=image.device).view(1, 3, 1, 1)
        loss = (image - target).pow(2).flatten(1).mean(1).sum()  # per image: independent of the batch
        return -scale * torch.autograd.grad(loss, x)[0]

    return cond_fn
