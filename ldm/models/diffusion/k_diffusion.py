"""Samplers in sigma space (see ``sigma_schedule``): Euler, Euler ancestral, Heun, DPM++ 2M,
DPM++ 2M SDE, and ``KDiffusionSampler``, which runs any of them (and UniPC) behind the DDIM-style
``sample(S, batch_size, shape, conditioning, ...)`` call.

Every sampler is a plain function ``f(denoiser, x, sigmas, callback, disable, generator)`` that
integrates from ``sigmas[0]`` to ``sigmas[-1]`` and calls ``callback(i, x, denoised)`` after
step i; ``generator`` drives the noise of the stochastic ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import trange

from ldm.models.diffusion.sampling_util import Generator, randn, warn_on_batch_mismatch
from ldm.models.diffusion.sigma_schedule import (DiscreteSigmaSchedule, ModelDenoiser,
                                                 sigma_to_vp_space, vp_to_sigma_space)
from ldm.models.diffusion.uni_pc import sample_unipc


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                       eta: float = 1.) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a step into a deterministic move to sigma_down and fresh noise sigma_up, so that
    with eta = 1 it samples the DDPM posterior q(x_to | x_from, x0) (Ho et al. 2020, eq. 7)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2)
                                              / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _noise_like(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def sample_euler(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Optional[Callable] = None, disable: Optional[bool] = None,
                 generator: Generator = None) -> torch.Tensor:
    """Euler's method (Karras et al. 2022, Alg. 1 without the second-order correction)."""
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = denoiser(x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_euler_ancestral(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                           callback: Optional[Callable] = None, disable: Optional[bool] = None,
                           generator: Generator = None, eta: float = 1.) -> torch.Tensor:
    """Ancestral sampling with Euler steps: Euler to sigma_down, then add sigma_up noise
    (Song et al. 2021 ancestral sampler in the sigma parameterisation of Karras et al. 2022)."""
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = denoiser(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + _noise_like(x, generator) * sigma_up
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_heun(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                callback: Optional[Callable] = None, disable: Optional[bool] = None,
                generator: Generator = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1, i.e. Alg. 2 with S_churn = 0);
    the final step to sigma = 0 is an Euler step. 2 evaluations per step, 1 for the last."""
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = denoiser(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x_euler = x + d * dt
        if sigmas[i + 1] == 0:
            x = x_euler
        else:
            d_2 = to_d(x_euler, sigmas[i + 1], denoiser(x_euler, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_dpmpp_2m(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                    callback: Optional[Callable] = None, disable: Optional[bool] = None,
                    generator: Generator = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) with lambda = -log(sigma): first order on
    the first step and on the final step to sigma = 0."""
    old_denoised, h_last = None, None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = denoiser(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = torch.log(sigmas[i]) - torch.log(sigmas[i + 1])
            denoised_d = denoised
            if old_denoised is not None:
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised_d
            h_last = h
        old_denoised = denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_dpmpp_2m_sde(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                        callback: Optional[Callable] = None, disable: Optional[bool] = None,
                        generator: Generator = None, eta: float = 1.) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, appendix, second-order multistep solver of the
    diffusion SDE in data prediction): x_t = (sigma_t / sigma_s) e^-h x_s + (1 - e^-2h) D +
    sigma_t sqrt(1 - e^-2h) z, D extrapolated from the last two predictions. ``eta`` = 0 gives
    DPM-Solver++(2M) with the midpoint-style correction."""
    old_denoised, h_last = None, None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = denoiser(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = torch.log(sigmas[i]) - torch.log(sigmas[i + 1])
            eta_h = eta * h
            decay = -torch.expm1(-h - eta_h)
            x = sigmas[i + 1] / sigmas[i] * torch.exp(-eta_h) * x + decay * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * decay * (1 / r) * (denoised - old_denoised)
            if eta:
                noise_std = sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt()
                x = x + _noise_like(x, generator) * noise_std
            h_last = h
        old_denoised = denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


SIGMA_SAMPLERS: Dict[str, Callable] = {
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
}


class KDiffusionSampler:
    """A sigma-space sampler behind the DDIM ``sample(...)`` call:
    ``KDiffusionSampler(model, algorithm="euler", sigma_schedule="default", device=None)``,
    with ``algorithm`` in ``SIGMA_SAMPLERS`` and ``sigma_schedule`` ``default`` (timesteps
    uniform from N - 1 to 0) or ``karras`` (Karras et al. 2022, eq. 5). ``S`` steps end at
    sigma = 0. ``eta`` (DDIM's) is ignored; the ancestral/SDE samplers use eta = 1."""

    def __init__(self, model, algorithm: str = "euler", sigma_schedule: str = "default",
                 device=None, **kwargs):
        if algorithm not in SIGMA_SAMPLERS:
            raise ValueError(f"unknown sigma-space sampler '{algorithm}'; expected one of "
                             f"{', '.join(SIGMA_SAMPLERS)}")
        if sigma_schedule not in ("default", "karras"):
            raise ValueError(f"unknown sigma schedule '{sigma_schedule}'; "
                             "expected 'default' or 'karras'")
        self.model = model
        self.algorithm = algorithm
        self.sigma_schedule = sigma_schedule
        self.device = torch.device(device) if device is not None else model.device
        self.schedule = DiscreteSigmaSchedule(
            model.alphas_cumprod.detach().to(self.device, torch.float32))

    def get_sigmas(self, steps: int) -> torch.Tensor:
        return self.schedule.get_sigmas(steps, self.sigma_schedule)

    def _refuse_unsupported(self, **used: bool) -> None:
        for name, is_used in used.items():
            if is_used:
                raise ValueError(f"the {self.algorithm} sampler does not support {name}; "
                                 "use ddim")

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Optional[Callable] = None, normals_sequence=None,
               img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0., mask: Optional[torch.Tensor] = None,
               x0: Optional[torch.Tensor] = None, temperature: float = 1.,
               noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
               verbose: bool = True, x_T: Optional[torch.Tensor] = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1., unconditional_conditioning: Any = None,
               dynamic_threshold: Optional[float] = None, ucg_schedule=None,
               generator: Generator = None,
               **kwargs) -> Tuple[torch.Tensor, Dict[str, List[torch.Tensor]]]:
        """Draw ``batch_size`` samples of ``shape`` (C, H, W) in ``S`` steps. Returns
        ``(samples, {"x_inter": [...], "pred_x0": [...]})`` like DDIM; ``callback(i)`` and
        ``img_callback(pred_x0, i)`` are called after each step. With ``mask``/``x0`` the
        prediction is ``x0`` where the mask is 1, so that region ends exactly at ``x0``."""
        self._refuse_unsupported(**{
            "score_corrector": score_corrector is not None, "quantize_x0": bool(quantize_x0),
            "noise_dropout": noise_dropout > 0, "temperature": temperature != 1.,
            "ucg_schedule": ucg_schedule is not None})
        warn_on_batch_mismatch(conditioning, batch_size)
        size = (batch_size, *shape)
        if verbose:
            print(f"Data shape for {self.algorithm} ({self.sigma_schedule} sigmas) sampling is "
                  f"{size}, {S} steps")
        sigmas = self.get_sigmas(S)
        img = randn(size, generator, device=self.device) if x_T is None else x_T
        denoiser = ModelDenoiser(self.model, self.schedule, conditioning,
                                 unconditional_conditioning, unconditional_guidance_scale,
                                 dynamic_threshold, mask=mask, x0=x0)
        intermediates = {"x_inter": [img], "pred_x0": [img]}

        def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            index = S - i - 1
            if index % log_every_t == 0 or index == S - 1:
                intermediates["x_inter"].append(sigma_to_vp_space(x, sigmas[i + 1].to(x)))
                intermediates["pred_x0"].append(denoised)
            if callback:
                callback(i)
            if img_callback:
                img_callback(denoised, i)

        x = vp_to_sigma_space(img, sigmas[0].to(img.dtype))
        samples = SIGMA_SAMPLERS[self.algorithm](denoiser, x, sigmas.to(img.dtype),
                                                 callback=on_step, disable=not verbose,
                                                 generator=generator)
        return denoiser.keep_known_region(samples), intermediates
