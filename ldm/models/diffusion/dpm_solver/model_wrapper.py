"""``model_wrapper``: a diffusion network of any parameterization and guidance, as the noise
predictor ``model_fn(x, t_continuous)`` that DPM_Solver integrates (Lu et al. 2022,
appendix D)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ldm.models.diffusion.sampling_util import CondFn, LossGuidance, append_dims, guided_model_output

from .noise_schedule import NoiseScheduleVP


def model_wrapper(model: Callable, noise_schedule: NoiseScheduleVP, model_type: str = "noise",
                  model_kwargs: Optional[dict] = None, guidance_type: str = "uncond",
                  condition: Any = None, unconditional_condition: Any = None,
                  guidance_scale: float = 1., classifier_fn: Optional[Callable] = None,
                  classifier_kwargs: Optional[dict] = None,
                  cond_fn: Optional[CondFn] = None) -> Callable:
    """Turn ``model(x, t_input[, cond], **model_kwargs)`` into a noise predictor
    ``model_fn(x, t_continuous)`` for DPM_Solver.

    ``model_type``: what the network predicts — ``noise`` (eps), ``x_start`` (x0), ``v``
    (Salimans & Ho 2022) or ``score``; converted to eps with alpha_t, sigma_t.
    ``guidance_type``: ``uncond``; ``classifier`` (Dhariwal & Nichol 2021: eps - s sigma_t grad
    log p(c | x_t)); ``classifier-free`` (Ho & Salimans 2022, batched [uncond, cond]).
    ``cond_fn(x, t_input, denoised)``: loss guidance on top of any of them, by the shared
    ``LossGuidance`` formula (the classifier's gradient takes the same path).
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

    def classifier_gradient(x: torch.Tensor, t_input: torch.Tensor, denoised) -> torch.Tensor:
        log_prob = classifier_fn(x, t_input, condition, **classifier_kwargs)
        return guidance_scale * torch.autograd.grad(log_prob.sum(), x)[0]

    loss_fn = classifier_gradient if guidance_type == "classifier" else cond_fn
    guidance = None if loss_fn is None else LossGuidance(
        lambda x, t, denoised: loss_fn(x, get_model_input_time(t), denoised), "eps",
        lambda t: noise_schedule.marginal_alpha(t) ** 2)

    def model_fn(x: torch.Tensor, t_continuous: torch.Tensor) -> torch.Tensor:
        if t_continuous.reshape((-1,)).shape[0] == 1:
            t_continuous = t_continuous.reshape((-1,)).expand((x.shape[0]))
        if guidance_type == "classifier-free":
            return guided_model_output(
                lambda x_in, t_in, c_in: noise_pred_fn(x_in, t_in, cond=c_in), x, t_continuous,
                condition, unconditional_condition, guidance_scale, guidance)
        noise = noise_pred_fn(x, t_continuous)
        return noise if guidance is None else guidance(x, t_continuous, noise)

    return model_fn
