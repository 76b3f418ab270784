"""Samplers by name, so scripts can offer ``--sampler NAME`` (and keep ``--plms`` / ``--dpm``).

Every sampler is built as ``get_sampler(name, model, device=None)`` and is called the same way:
``sampler.sample(S, batch_size, shape, conditioning, ..., x_T=..., unconditional_guidance_scale=
..., unconditional_conditioning=..., generator=...)`` -> ``(samples, intermediates)``. What each
one honours beyond that (eta, mask/x0, callbacks, ...) is ``sampler_capabilities(name)``, known
without a model; ``check_sampler_options(name, **options)`` refuses what it cannot honour, as
its ``sample()`` does.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional

from ldm.models.diffusion.ancestral import DDPMSampler
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.k_diffusion import SIGMA_SAMPLERS, KDiffusionSampler, sigma_sampler_capabilities
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.sampling_util import (
    OPTION_DEFAULTS,
    SamplerCapabilities,
    UnsupportedSamplerOption,
    check_options,
)
from ldm.models.diffusion.sigma_schedule import SIGMA_SCHEDULES

__all__ = ["SAMPLERS", "ALIASES", "CAPABILITIES", "SamplerCapabilities",
           "UnsupportedSamplerOption", "sampler_names", "describe_samplers", "display_name",
           "resolve_sampler_name", "get_sampler", "sampler_capabilities", "samplers_supporting",
           "check_sampler_options"]


def _sigma_sampler(algorithm: str, sigma_schedule: str) -> Callable:
    return partial(KDiffusionSampler, algorithm=algorithm, sigma_schedule=sigma_schedule)


# name: (A1111-style display name, description for --help)
_INFO = {
    "ddim": ("DDIM", "DDIM (Song et al. 2021), the originals' default; --ddim_eta adds noise"),
    "plms": ("PLMS", "PLMS (Liu et al. 2022), the originals' --plms"),
    "dpm": ("DPM-Solver++ 2M", "DPM-Solver++(2M) as the originals' --dpm runs it "
            "(time-uniform steps)"),
    "ddpm": ("DDPM", "DDPM ancestral sampling (Ho et al. 2020, Alg. 2); --steps = the model's timesteps "
             "(1000) is the originals' vanilla sampler, fewer respace it (Nichol & Dhariwal 2021)"),
    "euler": ("Euler", "Euler (Karras et al. 2022, Alg. 1 without the correction)"),
    "euler_a": ("Euler a", "Euler ancestral (stochastic)"),
    "heun": ("Heun", "Heun (Karras et al. 2022, Alg. 1); two model evaluations per step"),
    "lms": ("LMS", "linear multistep, order 4 (k-diffusion's sample_lms; Adams-Bashforth in sigma)"),
    "dpmpp_2m": ("DPM++ 2M", "DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2)"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "SDE-DPM-Solver++(2M) (Lu et al. 2022b; stochastic)"),
    "unipc": ("UniPC", "UniPC-2 with corrector, bh2 (Zhao et al. 2023)"),
}

SAMPLERS: Dict[str, Callable] = {"ddim": DDIMSampler, "plms": PLMSSampler, "dpm": DPMSolverSampler,
                                 "ddpm": DDPMSampler}
CAPABILITIES: Dict[str, SamplerCapabilities] = {
    name: sampler.capabilities for name, sampler in SAMPLERS.items()}
for _algorithm in SIGMA_SAMPLERS:
    _display, _description = _INFO[_algorithm]
    for _kind in SIGMA_SCHEDULES:
        _capabilities = sigma_sampler_capabilities(_algorithm, _kind)
        SAMPLERS[_capabilities.name] = _sigma_sampler(_algorithm, _kind)
        CAPABILITIES[_capabilities.name] = _capabilities
    _INFO[f"{_algorithm}_karras"] = (f"{_display} Karras", f"{_description}, Karras sigmas")

ALIASES: Dict[str, str] = {
    "dpm_solver": "dpm", "dpmsolver": "dpm", "dpm_solver++": "dpm", "dpmsolver++": "dpm",
    "k_euler": "euler", "k_euler_a": "euler_a", "euler_ancestral": "euler_a",
    "k_euler_ancestral": "euler_a", "k_heun": "heun", "k_lms": "lms", "k_dpmpp_2m": "dpmpp_2m",
    "dpm++_2m": "dpmpp_2m", "dpm++_2m_karras": "dpmpp_2m_karras",
    "dpm++_2m_sde": "dpmpp_2m_sde", "dpm++_2m_sde_karras": "dpmpp_2m_sde_karras",
    "uni_pc": "unipc", "pndm": "plms",
}


def sampler_names() -> List[str]:
    """Every name ``--sampler`` accepts: the samplers, then the aliases."""
    return list(SAMPLERS) + list(ALIASES)


def describe_samplers() -> str:
    """One line per sampler, for a script's ``--help``."""
    return "\n".join(f"{name}: {_INFO[name][1]}" for name in SAMPLERS)


def display_name(name: str) -> str:
    """The sampler's name as A1111-style ``parameters`` text writes it (``DPM++ 2M Karras``)."""
    return _INFO[resolve_sampler_name(name)][0]


def resolve_sampler_name(name: Optional[str] = None, plms: bool = False,
                         dpm: bool = False) -> str:
    """The canonical sampler name from ``--sampler`` and the legacy ``--plms`` / ``--dpm``
    flags (DDIM when none is given)."""
    if plms and dpm:
        raise ValueError("--plms and --dpm both given; choose one sampler")
    legacy = "plms" if plms else "dpm" if dpm else None
    if name is None:
        return legacy or "ddim"
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    if legacy is not None and legacy != key:
        raise ValueError(f"--sampler {name} conflicts with --{legacy}")
    return key


def get_sampler(name: str, model, device=None):
    """The sampler called ``name`` (or an alias) for ``model``, on ``device`` (default: the
    model's)."""
    return SAMPLERS[resolve_sampler_name(name)](model, device=device)


def sampler_capabilities(name: str) -> SamplerCapabilities:
    """What the sampler called ``name`` (or an alias) honours; no model needed."""
    return CAPABILITIES[resolve_sampler_name(name)]


def samplers_supporting(option: str) -> List[str]:
    """The samplers that honour the ``sample()`` keyword ``option`` (or
    ``partial_denoising``), in registry order."""
    return [name for name, capabilities in CAPABILITIES.items() if capabilities.supports(option)]


def check_sampler_options(name: str, **options: Any) -> None:
    """Raise ``UnsupportedSamplerOption`` (a ValueError with a one-line message) for the first
    option, named as the ``sample()`` keyword, that the sampler ``name`` cannot honour; neutral
    values (eta 0, temperature 1, None, ...) always pass. ``sample()`` runs the same check."""
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown sampler option {', '.join(unknown)}; expected one of "
                         f"{', '.join(OPTION_DEFAULTS)}")
    check_options(sampler_capabilities(name), options, samplers_supporting)
