"""Editing real images by deterministic DDIM inversion (Song et al. 2021, "Denoising Diffusion
Implicit Models", eq. 13 run backwards; the null-text-free variant of Mokady et al. 2023):

1. **Invert** the image latent with the *source* prompt at guidance scale 1: each step maps the
   latent at DDIM level ``i - 1`` to level ``i`` with the model's noise prediction at the grid's
   timestep ``i`` (:meth:`DDIMSampler.encode`, eps, x0 and v models alike). The latents of every
   level make the :class:`InvertedTrajectory`.
2. **Regenerate** with the *target* prompt and classifier-free guidance by plain DDIM steps
   (:meth:`DDIMSampler.decode`). ``keep`` in [0, 1] reuses the inverted trajectory for the first
   ``round(keep * steps)`` of the ``steps`` regeneration steps: the regeneration starts from the
   inverted latent at that level instead of the top one. ``keep=0`` regenerates from the inverted
   ``x_T``; ``keep=1`` returns the image latent itself; in between, the larger ``keep``, the more
   of the source's layout is fixed before the target prompt takes over.

The regeneration grid (``steps``) and the inversion grid (``inversion_steps``) may differ when the
level the regeneration starts from lies on both (e.g. 25 regeneration steps on a 50-step inversion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from ldm.modules.diffusionmodules.util import make_ddim_timesteps


@dataclass(frozen=True)
class EditPlan:
    """Where an edit meets its inversion: the regeneration runs ``regeneration_steps`` DDIM steps
    of its ``steps``-step grid, from the latent the inversion reaches after ``inversion_count``
    steps of its own grid (the same level)."""
    steps: int
    inversion_steps: int
    regeneration_steps: int
    inversion_count: int


def plan_edit(keep: float, steps: int, inversion_steps: int, num_timesteps: int) -> EditPlan:
    """The :class:`EditPlan` of ``keep`` (see the module docstring). Raises ValueError when
    ``keep`` is outside [0, 1] or the starting level is not on the inversion's grid."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"--keep must be in [0, 1], got {keep}")
    regeneration_grid = make_ddim_timesteps("uniform", steps, num_timesteps, verbose=False)
    inversion_grid = make_ddim_timesteps("uniform", inversion_steps, num_timesteps, verbose=False)
    level = len(regeneration_grid) - int(round(keep * len(regeneration_grid)))
    if level == 0:
        return EditPlan(steps, inversion_steps, 0, 0)
    start = regeneration_grid[level - 1]
    found = np.nonzero(inversion_grid == start)[0]
    if not len(found):
        raise ValueError(f"the regeneration starts at timestep {start} (--steps {steps}, --keep {keep}), which "
                         f"the {inversion_steps}-step inversion does not reach; give --inversion-steps equal to "
                         "--steps or a multiple of it")
    return EditPlan(steps, inversion_steps, level, int(found[0]) + 1)


@dataclass
class InvertedTrajectory:
    """``latents[i]``: the latent at level ``i`` of the inversion's DDIM grid (``latents[0]`` the
    image latent; ``latents[i]`` at model timestep ``timesteps[i - 1]`` for i >= 1)."""
    latents: List[torch.Tensor]
    timesteps: np.ndarray


@torch.no_grad()
def ddim_invert(sampler: Any, x0: torch.Tensor, cond: Any, steps: int, count: Optional[int] = None,
                unconditional_conditioning: Any = None, scale: float = 1.0,
                callback: Optional[Callable[[int], None]] = None) -> InvertedTrajectory:
    """Invert ``x0`` along the ``steps``-step DDIM grid of ``sampler`` (a :class:`DDIMSampler`)
    for ``count`` steps (all by default) with conditioning ``cond`` at guidance ``scale`` (1: the
    conditional model alone, the usual choice); returns every latent on the way."""
    sampler.make_schedule(ddim_num_steps=steps, ddim_eta=0.0, verbose=False)
    grid = np.asarray(sampler.ddim_timesteps)
    count = len(grid) if count is None else count
    latents = [x0]
    if count > 0:
        _, out = sampler.encode(x0, cond, count, return_intermediates=count, unconditional_guidance_scale=scale,
                                unconditional_conditioning=unconditional_conditioning, callback=callback,
                                verbose=False)
        latents += out["intermediates"]
    return InvertedTrajectory(latents, grid[:count])


@torch.no_grad()
def regenerate(sampler: Any, trajectory: InvertedTrajectory, plan: EditPlan, cond: Any,
               unconditional_conditioning: Any = None, scale: float = 1.0, eta: float = 0.0,
               generator: Any = None, callback: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """The edited latent: ``plan.regeneration_steps`` DDIM steps with ``cond`` (guided by
    ``scale`` against ``unconditional_conditioning``) from the inverted latent of ``plan``."""
    start = trajectory.latents[plan.inversion_count]
    if plan.regeneration_steps == 0:
        return start
    sampler.make_schedule(ddim_num_steps=plan.steps, ddim_eta=eta, verbose=False)
    return sampler.decode(start, cond, plan.regeneration_steps, unconditional_guidance_scale=scale,
                          unconditional_conditioning=unconditional_conditioning, callback=callback,
                          verbose=False, generator=generator)


def edit_latent(sampler: Any, x0: torch.Tensor, source_cond: Any, cond: Any, plan: EditPlan,
                unconditional_conditioning: Any = None, scale: float = 1.0, eta: float = 0.0,
                generator: Any = None, callback: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Invert ``x0`` with ``source_cond`` at scale 1 as far as ``plan`` needs, then regenerate
    with ``cond`` at ``scale``: the whole edit on latents (``callback`` after each of the
    ``plan.inversion_count + plan.regeneration_steps`` steps)."""
    trajectory = ddim_invert(sampler, x0, source_cond, plan.inversion_steps, plan.inversion_count,
                             callback=callback)
    return regenerate(sampler, trajectory, plan, cond, unconditional_conditioning, scale, eta, generator,
                      callback=callback)
