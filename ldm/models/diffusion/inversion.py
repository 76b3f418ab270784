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

**DiffEdit masking** (Couairon, Verbeek, Schwenk & Cord 2022, "DiffEdit: Diffusion-based semantic
image editing with mask guidance", arXiv:2210.11427), optional: the region to edit is where the
model's noise predictions for the two prompts differ. The image latent is noised to timestep
``strength * T`` with ``noises`` draws; the map is ``|eps(x_t, target) - eps(x_t, source)|``,
averaged over channels and draws, rescaled per image to [0, 1] (min to 0, max to 1), and the mask is
where it reaches ``threshold`` (:func:`diffedit_mask`). The regeneration then blends after every
step: inside the mask its own latent, outside the inverted source latent of the same level
(:func:`regenerate` with ``mask``), so the unmasked region ends exactly at the image latent. The
paper's encoding ratio ``r`` is ``1 - keep`` here. Options: the mask may be grown by ``N`` latent
pixels (:func:`dilate_mask`); inside the mask the regeneration may start, instead of from the
inverted latent (which encodes the source's content, e.g. its colour, deterministically), from the
image latent noised afresh to the start level (``q_sample``: inpainting the region with the target
prompt), with DDIM ``eta > 0`` adding fresh noise at every step there too; and the inversion may use
the empty prompt (as the paper) instead of the source prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from ldm.models.diffusion.sampling_util import CondFn, check_finite, randn
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


def blend_levels(plan: EditPlan, num_timesteps: int) -> List[int]:
    """For each level ``j < plan.regeneration_steps`` of the regeneration grid, the level of the
    inversion grid at the same timestep (0 for the image): where a masked regeneration takes the
    source latent it keeps. Raises ValueError when a level is not on the inversion grid."""
    regeneration_grid = make_ddim_timesteps("uniform", plan.steps, num_timesteps, verbose=False)
    inversion_grid = make_ddim_timesteps("uniform", plan.inversion_steps, num_timesteps, verbose=False)
    levels = [0]
    for timestep in regeneration_grid[:plan.regeneration_steps - 1]:
        found = np.nonzero(inversion_grid == timestep)[0]
        if not len(found):
            raise ValueError(f"the masked regeneration passes timestep {timestep} (--steps {plan.steps}), which the "
                             f"{plan.inversion_steps}-step inversion does not reach; give --inversion-steps equal "
                             "to --steps or a multiple of it")
        levels.append(int(found[0]) + 1)
    return levels[:plan.regeneration_steps]


def check_diffedit(threshold: float, strength: float, noises: int) -> None:
    """Raise ValueError, naming the flag, for DiffEdit settings outside their ranges."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"--mask-threshold must be in (0, 1), got {threshold}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"--mask-strength must be in (0, 1], got {strength}")
    if noises < 1:
        raise ValueError(f"--mask-noises must be at least 1, got {noises}")


@torch.no_grad()
def difference_map(sampler: Any, x0: torch.Tensor, source_cond: Any, cond: Any, strength: float = 0.5,
                   noises: int = 10, generator: Any = None) -> torch.Tensor:
    """DiffEdit's map, shape ``(B, 1, H, W)`` in [0, 1]: ``|eps(x_t, cond) - eps(x_t, source_cond)|``
    (conditional predictions, no guidance) averaged over channels and ``noises`` draws of ``x_t``,
    ``x0`` noised to timestep ``round(strength * (T - 1))``, then min-max rescaled per image."""
    model = sampler.model
    timestep = int(round(strength * (model.num_timesteps - 1)))
    t = torch.full((x0.shape[0],), timestep, device=x0.device, dtype=torch.long)
    total = torch.zeros_like(x0[:, :1])
    for _ in range(noises):
        x_t = model.q_sample(x0, t, randn(x0.shape, generator, device=x0.device, dtype=x0.dtype).to(x0.device))
        _, target_eps = sampler.model_output_and_eps(x_t, t, cond)
        _, source_eps = sampler.model_output_and_eps(x_t, t, source_cond)
        total += (target_eps - source_eps).abs().mean(dim=1, keepdim=True)
    low = total.amin(dim=(1, 2, 3), keepdim=True)
    high = total.amax(dim=(1, 2, 3), keepdim=True)
    return (total - low) / (high - low).clamp_min(torch.finfo(total.dtype).tiny)


def diffedit_mask(sampler: Any, x0: torch.Tensor, source_cond: Any, cond: Any, threshold: float = 0.5,
                  strength: float = 0.5, noises: int = 10, generator: Any = None) -> torch.Tensor:
    """DiffEdit's binary mask ``(B, 1, H, W)``: 1 where :func:`difference_map` reaches
    ``threshold`` (the region to edit), 0 elsewhere; never empty (the map's maximum is 1)."""
    check_diffedit(threshold, strength, noises)
    return (difference_map(sampler, x0, source_cond, cond, strength, noises, generator) >= threshold).to(x0.dtype)


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """``mask`` ``(B, 1, H, W)`` grown by ``pixels`` latent pixels in every direction (a square
    max filter): the edit region's border, where the colour bleeds, joins the region."""
    if pixels < 0:
        raise ValueError(f"--mask-dilate must be 0 or more, got {pixels}")
    if pixels == 0:
        return mask
    return torch.nn.functional.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


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
               generator: Any = None, callback: Optional[Callable[[int], None]] = None,
               mask: Optional[torch.Tensor] = None, fill_noise: Optional[torch.Tensor] = None,
               cond_fn: Optional[CondFn] = None) -> torch.Tensor:
    """The edited latent: ``plan.regeneration_steps`` DDIM steps with ``cond`` (guided by
    ``scale`` against ``unconditional_conditioning``, and by the loss guidance ``cond_fn`` when
    given) from the inverted latent of ``plan``. With
    ``mask`` (1: edit), each step's latent is kept only inside it and is the inverted latent of the
    same level outside (DiffEdit's blending); the trajectory must hold those levels. With
    ``fill_noise`` too, the start inside the mask is the image latent noised to the start level
    with it (``q_sample``) rather than the inverted latent."""
    start = trajectory.latents[plan.inversion_count]
    if plan.regeneration_steps == 0:
        return start
    sampler.make_schedule(ddim_num_steps=plan.steps, ddim_eta=eta, verbose=False)
    if mask is not None and fill_noise is not None:
        x0 = trajectory.latents[0]
        t = torch.full((x0.shape[0],), int(sampler.ddim_timesteps[plan.regeneration_steps - 1]), device=x0.device,
                       dtype=torch.long)
        start = mask * sampler.model.q_sample(x0, t, fill_noise) + (1 - mask) * start
    if mask is None:
        return sampler.decode(start, cond, plan.regeneration_steps, unconditional_guidance_scale=scale,
                              unconditional_conditioning=unconditional_conditioning, callback=callback,
                              verbose=False, generator=generator, cond_fn=cond_fn)
    levels = blend_levels(plan, sampler.ddpm_num_timesteps)
    x = start
    for done, index in enumerate(reversed(range(plan.regeneration_steps))):
        t = torch.full((x.shape[0],), int(sampler.ddim_timesteps[index]), device=x.device, dtype=torch.long)
        x, _ = sampler.p_sample_ddim(x, cond, t, index, unconditional_guidance_scale=scale,
                                     unconditional_conditioning=unconditional_conditioning, generator=generator,
                                     cond_fn=cond_fn)
        check_finite(x, done + 1, plan.regeneration_steps, sampler.label)
        x = mask * x + (1 - mask) * trajectory.latents[levels[index]]
        if callback:
            callback(done)
    return x


def edit_latent(sampler: Any, x0: torch.Tensor, source_cond: Any, cond: Any, plan: EditPlan,
                unconditional_conditioning: Any = None, scale: float = 1.0, eta: float = 0.0,
                generator: Any = None, mask: Optional[torch.Tensor] = None,
                fill_noise: Optional[torch.Tensor] = None,
                callback: Optional[Callable[[int], None]] = None, cond_fn: Optional[CondFn] = None) -> torch.Tensor:
    """Invert ``x0`` with ``source_cond`` at scale 1 as far as ``plan`` needs, then regenerate
    with ``cond`` at ``scale`` (blended outside ``mask`` when given, started inside it from
    ``x0`` noised with ``fill_noise`` when given): the whole edit on latents (``callback`` after
    each of the ``plan.inversion_count + plan.regeneration_steps`` steps)."""
    trajectory = ddim_invert(sampler, x0, source_cond, plan.inversion_steps, plan.inversion_count,
                             callback=callback)
    return regenerate(sampler, trajectory, plan, cond, unconditional_conditioning, scale, eta, generator,
                      callback=callback, mask=mask, fill_noise=fill_noise, cond_fn=cond_fn)
