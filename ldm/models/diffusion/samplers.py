"""Samplers by name, so scripts can offer ``--sampler NAME`` (and keep ``--plms`` / ``--dpm``).

Every sampler is built as ``get_sampler(name, model, device=None)`` and is called the same way:
``sampler.sample(S, batch_size, shape, conditioning, ..., x_T=..., unconditional_guidance_scale=
..., unconditional_conditioning=..., generator=...)`` -> ``(samples, intermediates)``.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Optional

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from ldm.models.diffusion.k_diffusion import KDiffusionSampler
from ldm.models.diffusion.plms import PLMSSampler


def _sigma_sampler(algorithm: str, sigma_schedule: str) -> Callable:
    return partial(KDiffusionSampler, algorithm=algorithm, sigma_schedule=sigma_schedule)


# name: (A1111-style display name, description for --help)
_INFO = {
    "ddim": ("DDIM", "DDIM (Song et al. 2021), the originals' default; --ddim_eta adds noise"),
    "plms": ("PLMS", "PLMS (Liu et al. 2022), the originals' --plms"),
    "dpm": ("DPM-Solver++ 2M", "DPM-Solver++(2M) as the originals' --dpm runs it "
            "(time-uniform steps)"),
    "euler": ("Euler", "Euler (Karras et al. 2022, Alg. 1 without the correction)"),
    "euler_a": ("Euler a", "Euler ancestral (stochastic)"),
    "heun": ("Heun", "Heun (Karras et al. 2022, Alg. 1); two model evaluations per step"),
    "dpmpp_2m": ("DPM++ 2M", "DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2)"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "SDE-DPM-Solver++(2M) (Lu et al. 2022b; stochastic)"),
    "unipc": ("UniPC", "UniPC-2 with corrector, bh2 (Zhao et al. 2023)"),
}

SAMPLERS: Dict[str, Callable] = {"ddim": DDIMSampler, "plms": PLMSSampler, "dpm": DPMSolverSampler}
for _algorithm in ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc"):
    SAMPLERS[_algorithm] = _sigma_sampler(_algorithm, "default")
    SAMPLERS[f"{_algorithm}_karras"] = _sigma_sampler(_algorithm, "karras")
    _display, _description = _INFO[_algorithm]
    _INFO[f"{_algorithm}_karras"] = (f"{_display} Karras", f"{_description}, Karras sigmas")

ALIASES: Dict[str, str] = {
    "dpm_solver": "dpm", "dpmsolver": "dpm", "dpm_solver++": "dpm", "dpmsolver++": "dpm",
    "k_euler": "euler", "k_euler_a": "euler_a", "euler_ancestral": "euler_a",
    "k_euler_ancestral": "euler_a", "k_heun": "heun", "k_dpmpp_2m": "dpmpp_2m",
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
