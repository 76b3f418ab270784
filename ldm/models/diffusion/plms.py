"""PLMS sampling (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"):
DDIM's update driven by a linear-multistep (Adams-Bashforth) combination of noise predictions,
started with one pseudo improved-Euler step, on the DDIM time grid."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from ldm.models.diffusion.ddim_schedule import DDIMScheduleSampler
from ldm.models.diffusion.sampling_util import BASIC_OPTIONS, CondFn, Generator, SamplerCapabilities


def adams_bashforth_eps(e_t: torch.Tensor, old_eps: List[torch.Tensor]) -> torch.Tensor:
    """Linear-multistep noise estimate from the current and up to three previous predictions
    (Adams-Bashforth orders 2-4; Liu et al. 2022, eq. 12)."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


PLMS_CAPABILITIES = SamplerCapabilities(
    "plms", BASIC_OPTIONS | {"mask", "img_callback", "score_corrector", "quantize_x0",
                             "dynamic_threshold", "ucg_schedule"},
    why_not=(("eta", "its multistep update needs deterministic DDIM steps "
                     "(make_schedule's ddim_eta must be 0 for PLMS)"),
             ("temperature", "it draws no noise to scale (eta is 0)"),
             ("noise_dropout", "it draws no noise to drop out (eta is 0)")))


class PLMSSampler(DDIMScheduleSampler):
    """``PLMSSampler(model, schedule="linear", device=None)``; ``sample`` returns
    ``(samples, {"x_inter": [...], "pred_x0": [...]})`` after S + 1 model evaluations. eta must
    be 0."""

    capabilities = PLMS_CAPABILITIES
    label = "PLMS"
    loop_method = "plms_sampling"
    plms_sampling = DDIMScheduleSampler.grid_sampling

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform",
                      ddim_eta: float = 0., verbose: bool = True) -> None:
        if ddim_eta != 0:
            raise ValueError("ddim_eta must be 0 for PLMS")
        super().make_schedule(ddim_num_steps, ddim_discretize, ddim_eta, verbose)

    def grid_step(self, x, c, t, t_next, index, history, **kwargs):
        """A PLMS step that keeps the last three noise predictions in ``history``."""
        x_prev, pred_x0, e_t = self.p_sample_plms(x, c, t, index, old_eps=history, t_next=t_next,
                                                  **kwargs)
        history.append(e_t)
        if len(history) >= 4:
            history.pop(0)
        return x_prev, pred_x0

    @torch.no_grad()
    def p_sample_plms(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int,
                      repeat_noise: bool = False, use_original_steps: bool = False,
                      quantize_denoised: bool = False, temperature: float = 1.,
                      noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
                      unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      old_eps: Optional[List[torch.Tensor]] = None,
                      t_next: Optional[torch.Tensor] = None,
                      dynamic_threshold: Optional[float] = None, generator: Generator = None,
                      cond_fn: Optional[CondFn] = None):
        """One PLMS step; returns ``(x_prev, pred_x0, e_t)``. The first step (no history) is a
        pseudo improved-Euler step costing two model evaluations (Liu et al. 2022, eq. 11)."""
        old_eps = old_eps or []
        coefficients = self.step_coefficients(index, use_original_steps, x.shape[0], x.dtype)

        def eps_at(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            return self.model_output_and_eps(
                x_in, t_in, c, unconditional_guidance_scale, unconditional_conditioning,
                score_corrector, corrector_kwargs, cond_fn)[1]

        def ddim_step(e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            return self.ddim_update(x, e, coefficients, None, quantize_denoised, temperature,
                                    noise_dropout, dynamic_threshold, generator, repeat_noise)

        e_t = eps_at(x, t)
        if len(old_eps) == 0:
            x_prev, _ = ddim_step(e_t)
            e_t_prime = (e_t + eps_at(x_prev, t_next)) / 2
        else:
            e_t_prime = adams_bashforth_eps(e_t, old_eps)
        x_prev, pred_x0 = ddim_step(e_t_prime)
        return x_prev, pred_x0, e_t
