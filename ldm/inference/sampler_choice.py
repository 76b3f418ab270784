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


# Keywords of ``sampler.sample`` -> the flag a user sets them with.
_OPTION_FLAGS = {"eta": "--ddim_eta"}


def chosen_sampler(opt: argparse.Namespace, needs_partial_denoising: bool) -> str:
    """The canonical sampler name the flags ask for. Scripts that denoise part of the way
    (img2img, depth2img) have no sampler flags: they need DDIM's ``stochastic_encode``/``decode``."""
    if needs_partial_denoising:
        return DEFAULT_SAMPLER
    try:
        return registry.resolve_sampler_name(getattr(opt, "sampler", None), plms=getattr(opt, "plms", False),
                                             dpm=getattr(opt, "dpm", False))
    except ValueError as err:
        raise UsageError(str(err)) from None


def sampler_takes_eta(name: str) -> bool:
    """Whether the sampler honours ``--ddim_eta`` (DDIM does)."""
    return registry.sampler_capabilities(name).supports("eta")


def check_sampler_options(name: str, eta: float, blends_known_region: bool) -> None:
    """Refuse, before any model is loaded, an option the sampler would not honour (the sampler
    contract of :mod:`ldm.models.diffusion.samplers`), naming the flag."""
    try:
        registry.check_sampler_options(name, eta=eta, mask=True if blends_known_region else None)
    except registry.UnsupportedSamplerOption as err:
        message = str(err)
        for keyword, flag in _OPTION_FLAGS.items():
            message = message.replace(f"{keyword} (", f"{keyword} ({flag} ", 1)
        raise UsageError(message) from None


@dataclass
class ChosenSampler:
    name: str
    display_name: str
    sampler: Any


def build_sampler(name: str, model: torch.nn.Module) -> ChosenSampler:
    """The sampler instance for ``model`` (device from the model) and its A1111-style name."""
    return ChosenSampler(name=name, display_name=sampler_display_name(name), sampler=registry.get_sampler(name, model))


def sampler_display_name(name: str) -> str:
    """The A1111-style name of sampler ``name`` written into the PNG parameters (e.g. "DDIM")."""
    return registry.display_name(name)
