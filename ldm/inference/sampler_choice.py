"""Which sampler a script uses: ``--sampler NAME`` from the sampler registry
(:mod:`ldm.models.diffusion.samplers`) or the originals' ``--plms`` / ``--dpm`` switches (DDIM
when none is given), and the name written into the PNG parameters."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from ldm.inference.errors import UsageError
from ldm.models.diffusion import samplers as registry

DEFAULT_SAMPLER = "ddim"


def chosen_sampler(opt: argparse.Namespace, needs_partial_denoising: bool) -> str:
    """The canonical sampler name the flags ask for. Scripts that denoise part of the way
    (img2img, depth2img) have no sampler flags: they need DDIM's ``stochastic_encode``/``decode``."""
    if needs_partial_denoising:
        return DEFAULT_SAMPLER
    try:
        return registry.resolve_sampler_name(opt.sampler, plms=opt.plms, dpm=opt.dpm)
    except ValueError as err:
        raise UsageError(str(err)) from None


@dataclass
class ChosenSampler:
    name: str
    display_name: str
    sampler: Any


def build_sampler(name: str, model: torch.nn.Module) -> ChosenSampler:
    """The sampler instance for ``model`` (device from the model) and its A1111-style name."""
    return ChosenSampler(name=name, display_name=registry.display_name(name),
                         sampler=registry.get_sampler(name, model))
