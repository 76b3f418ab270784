"""``model_wrapper``: a diffusion network of any parameterization and guidance, as the noise
predictor ``model_fn(x, t_continuous)`` that DPM_Solver integrates (Lu et al. 2022,
appendix D)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ldm.models.diffusion.sampling_util import append_dims, guided_model_output

from .noise_schedule import NoiseScheduleVP


def model_wrapper(model: Callable, noise_schedule: NoiseScheduleVP, model_type: str = "noise",
                  model_kwargs: Optional[dict] = None, guidance_type: str = "uncond",
                  condition: Any = None, unconditional_condition: Any = None,
                  guidance_scale: float = 1., classifier_fn: Optional[Callable] = None,
                  classifier_kwargs: Optional[dict] = None) -> Callable:
    """Turn ``model(x, t_input[, cond], **model_kwargs)`` into a noise predictor
    ``model_fn(x, t_continuous)`` for DPM_Solver.

    ``model_type``: what the network predicts — ``noise`` (eps), ``x_start`` (x0), ``v``
    (Salimans & Ho 2022) or ``score``; converted to eps with alpha_t, sigma_t.
    ``guidance_type``: ``uncond``; ``classifier`` (Dhariwal & Nichol 2021: eps - s sigma_t grad
    log p(c | x_t)); ``classifier-free`` (Ho & Salimans 2022, batched [uncond, cond]).
    """
    model_kwargs = model_kwargs or {}
    classifier_kwargs = classifier_kwargs or {}
    if model_type not in ("noise", "x_start", "v", "score"):
        raise ValueError(f"model_type must be noise, x_start, v or score, got '{model_type}'")
    if guidance_type not in ("uncond", "classifier", "classifier-free"):
        raise ValueError("guidance_type must be uncond, classifier or classifier-free, "
                         f"got '{guidance_type}'")
    if guidance_type == "classifier" and classifier_fn is None:
        raise ValueError("classifier guidance needs classifier_fn")

    def get_model_input_time(t_continuous: torch.Tensor) -> torch.Tensor:
        if noise_schedule.schedule == "discrete":
            return (t_continuous - 1. / noise_schedule.total_N) * 1000.
        return t_continuous

    def noise_pred_fn(x: torch.Tensor, t_continuous: torch.Tensor, cond: Any = None):
        t_input = get_model_input_time(t_continuous)
        if cond is None:
            output = model(x, t_input, **model_kwargs)
        else:
            output = model(x, t_input, cond, **model_kwargs)
        if model_type == "noise":
            return output
        dims = x.dim()
        alpha_t = append_dims(noise_schedule.marginal_alpha(t_continuous), dims)
        sigma_t = append_dims(noise_schedule.marginal_std(t_continuous), dims)
        if model_type == "x_start":
            return (x - alpha_t * output) / sigma_t
        if model_type == "v":
            return alpha_t * output + sigma_t * x
        return -sigma_t * output

    def cond_grad_fn(x: torch.Tensor, t_input: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_prob = classifier_fn(x_in, t_input, condition, **classifier_kwargs)
            return torch.autograd.grad(log_prob.sum(), x_in)[0]

    def model_fn(x: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
        if t_continuous.reshape((-1,)).shape[0] == 1:
            t_continuous = t_continuous.reshape((-1,)).expand((x.shape[0]))
        if guidance_type == "uncond":
            return noise_pred_fn(x, t_continuous)
        if guidance_type == "classifier":
            cond_grad = cond_grad_fn(x, get_model_input_time(t_continuous))
            sigma_t = noise_schedule.marginal_std(t_continuous)
            noise = noise_pred_fn(x, t_continuous)
            return noise - guidance_scale * append_dims(sigma_t, cond_grad.dim()) * cond_grad
        return guided_model_output(lambda x_in, t_in, c_in: noise_pred_fn(x_in, t_in, cond=c_in),
                                   x, t_continuous, condition, unconditional_condition,
                                   guidance_scale)

    return model_fn
