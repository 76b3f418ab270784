"""Loss-guidance presets: ``cond_fn``s for the samplers' loss-guidance hook
(``ldm.models.diffusion.sampling_util.LossGuidance``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

from ldm.inference.errors import UsageError
from ldm.models.diffusion.sampling_util import CondFn

DEFAULT_GUIDE_SCALE = 100.0  # chosen on the shipped shapes model: benchmarks/guidance_color.py


def color_guidance(model: torch.nn.Module, rgb: Sequence[float], scale: float) -> CondFn:
    """The colour loss of the diffusers guidance tutorial: ``scale`` times the mean squared
    distance of the decoded image's pixels (in [0, 1]) to ``rgb`` (each in [0, 1]), per image.
    The predicted x0 is decoded with the first stage (a pixel model uses it as the image) and
    the gradient runs back through the decoder to the latent x; the cond_fn returns minus that
    gradient (a log-probability-like objective)."""
    if len(rgb) != 3 or not all(0. <= c <= 1. for c in rgb):
        raise ValueError(f"the guide colour must be three numbers in [0, 1], got {list(rgb)}")

    def cond_fn(x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        decode = getattr(model, "differentiable_decode_first_stage", None)  # decode_first_stage is no_grad
        image = decode(denoised) if decode is not None else denoised
        image = (image.float() + 1) / 2
        target = torch.tensor(list(rgb), device=image.device).view(1, 3, 1, 1)
        loss = (image - target).pow(2).flatten(1).mean(1).sum()  # per image: independent of the batch
        return -scale * torch.autograd.grad(loss, x)[0]

    return cond_fn


@dataclass(frozen=True)
class ColorGuidanceRequest:
    """``--guide-color R,G,B`` (0-255) at ``--guide-scale``: checked before the model is loaded,
    made into the colour-loss ``cond_fn`` of a model, and recorded in the images' parameters."""
    rgb: tuple
    scale: float

    @classmethod
    def from_options(cls, opt: Any) -> Optional["ColorGuidanceRequest"]:
        """The request of ``opt`` (None without ``guide_color``); a bad colour or scale is a
        one-line UsageError."""
        color = getattr(opt, "guide_color", None)
        if color is None:
            return None
        scale = opt.guide_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise UsageError(f"--guide-scale must be a finite number >= 0, got {scale!r}")
        return cls(parse_color(color), float(scale))

    def cond_fn(self, model: torch.nn.Module) -> CondFn:
        return color_guidance(model, [c / 255.0 for c in self.rgb], self.scale)

    def parameters(self) -> Dict[str, object]:
        return {"Guidance color": ",".join(str(c) for c in self.rgb), "Guidance scale": self.scale}


def parse_color(value: Any) -> tuple:
    """``"R,G,B"`` or three whole numbers, each in [0, 255]."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        rgb = tuple(int(str(part).strip()) for part in parts)
        ok = len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) and not any(isinstance(p, (bool, float)) for p in parts)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"--guide-color must be three whole numbers 0-255 as R,G,B (e.g. 40,85,220), got {value!r}")
    return rgb
