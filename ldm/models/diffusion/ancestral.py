"""Ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 2)
with the ``sample(...)`` call of every sampler: each step draws x_s from the posterior
q(x_s | x_t, x0) (eqs. 6-7) around the model's prediction of x0.

With as many steps as the model has timesteps this is the models' own ``p_sample_loop`` (the
originals' "vanilla" sampling, ``scripts/sample_diffusion.py -v``), with one noise generator per
image; with fewer, the same posterior on the respaced schedule of the visited timesteps
(Nichol & Dhariwal 2021, "Improved DDPM", sec. 4), which is DDIM at eta 1 (Song et al. 2021).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Tuple

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling_util import (
    BASIC_OPTIONS,
    LossGuidance,
    Sampler,
    SamplerCapabilities,
    check_finite,
    guided_model_output,
    randn,
)
from ldm.modules.diffusionmodules.util import StepCountError

DDPM_CAPABILITIES = SamplerCapabilities(
    "ddpm", BASIC_OPTIONS | {"img_callback"},
    why_not=(("eta", "it draws the posterior's own noise (eta 1 by construction)"),
             ("mask", "it has no known-region blend for inpainting")))


def respaced_timesteps(steps: int, num_timesteps: int) -> np.ndarray:
    """The timesteps visited, noisiest first: ``steps`` of them evenly spread from the last to 0
    (every one when ``steps`` is the model's ``num_timesteps``)."""
    if not 1 <= steps <= num_timesteps:
        raise StepCountError(f"--steps must be in [1, {num_timesteps}] (the model's diffusion steps) for "
                             f"the ddpm sampler, got {steps}")
    return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int64)


def predicted_x0(parameterization: str, x_t: torch.Tensor, output: torch.Tensor, a_t: float) -> torch.Tensor:
    """x0 from the network's output at x_t: eq. 4 of Ho et al. 2020 solved for x0 (eps), or
    x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v (Salimans & Ho 2022)."""
    if parameterization == "eps":
        return (x_t - math.sqrt(1 - a_t) * output) / math.sqrt(a_t)
    if parameterization == "v":
        return math.sqrt(a_t) * x_t - math.sqrt(1 - a_t) * output
    if parameterization == "x0":
        return output
    raise ValueError(f"unknown parameterization '{parameterization}'")


def posterior_coefficients(a_t: float, a_s: float) -> Tuple[float, float, float]:
    """``(c_x0, c_xt, std)`` of q(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, std^2) between cumulative
    alphas a_t and a_s (s < t; a_s = 1 for the step to x0): Ho et al. 2020 eqs. 6-7 with
    beta = 1 - a_t / a_s. Computed in double precision (the step to x0 divides by 1 - a_0 ~ 1e-4)."""
    beta = 1 - a_t / a_s
    return (math.sqrt(a_s) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t),
            math.sqrt(beta * (1 - a_s) / (1 - a_t)))


class DDPMSampler(Sampler):
    """``DDPMSampler(model, device=None)``; ``sample`` returns ``(samples, {"x_inter": [...],
    "pred_x0": [...]})``. The x0 prediction is clipped to [-1, 1] when the model's
    ``clip_denoised`` says so (pixel-space DDPMs; LatentDiffusion sets it False), as in
    ``p_sample_loop``. Noise is drawn after each model call, also at the last step (whose
    variance is 0), so that with the global generator the draws are those of ``p_sample_loop``."""

    capabilities = DDPM_CAPABILITIES
    label = "DDPM"

    def __init__(self, model, device=None, **kwargs):
        super().__init__(model, device)
        self.alphas_cumprod = model.alphas_cumprod.detach().to("cpu", torch.float64).tolist()

    def _sample(self, S: int, size: Tuple[int, ...], request: SimpleNamespace):
        timesteps = respaced_timesteps(S, len(self.alphas_cumprod))
        if request.verbose:
            print(f"Running {self.label} Sampling with {S} timesteps, data shape {size}")
        img = randn(size, request.generator, device=self.device) if request.x_T is None else request.x_T
        intermediates = {"x_inter": [img], "pred_x0": [img]}
        clip = bool(getattr(self.model, "clip_denoised", False))
        guidance = LossGuidance.for_model(request.cond_fn, self.model)
        for i, step in enumerate(tqdm(timesteps, desc=f"{self.label} Sampler", disable=not request.verbose)):
            t = torch.full((size[0],), int(step), device=self.device, dtype=torch.long)
            output = guided_model_output(self.model.apply_model, img, t, request.conditioning,
                                         request.unconditional_conditioning, request.unconditional_guidance_scale,
                                         guidance)
            a_t = self.alphas_cumprod[step]
            a_s = self.alphas_cumprod[timesteps[i + 1]] if i + 1 < S else 1.0
            pred_x0 = predicted_x0(self.model.parameterization, img, output.to(img.dtype), a_t)
            if clip:
                pred_x0 = pred_x0.clamp(-1., 1.)
            c_x0, c_xt, std = posterior_coefficients(a_t, a_s)
            noise = randn(img.shape, request.generator, device=self.device, dtype=img.dtype)
            img = c_x0 * pred_x0 + c_xt * img + std * noise
            check_finite(img, i + 1, S, self.label)
            if request.callback:
                request.callback(i)
            if request.img_callback:
                request.img_callback(pred_x0, i)
            index = S - i - 1
            if index % request.log_every_t == 0 or index == S - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates
