"""Samplers in sigma space (see ``sigma_schedule``): Euler, Euler ancestral, Heun, LMS, DPM++ 2M,
DPM++ 2M SDE, and ``KDiffusionSampler``, which runs any of them (and UniPC) behind the DDIM-style
``sample(S, batch_size, shape, conditioning, ...)`` call.

Every sampler is a plain function ``f(denoiser, x, sigmas, callback, disable, generator)`` that
integrates from ``sigmas[0]`` to ``sigmas[-1]`` and calls ``callback(i, x, denoised)`` after
step i (the loop is ``integrate``); ``generator`` drives the noise of the stochastic ones.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from tqdm import trange

from ldm.models.diffusion.sampling_util import (
    BASIC_OPTIONS,
    Generator,
    Sampler,
    SamplerCapabilities,
    check_finite,
    randn,
)
from ldm.models.diffusion.sigma_schedule import (
    SIGMA_SCHEDULES,
    DiscreteSigmaSchedule,
    ModelDenoiser,
    sigma_to_vp_space,
    vp_to_sigma_space,
)
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


def integrate(step: Callable, denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
              callback: Optional[Callable] = None, disable: Optional[bool] = None) -> torch.Tensor:
    """The loop every sampler here runs: for i = 0 .. n - 1, ``denoised = denoiser(x,
    sigmas[i])``, ``x = step(i, x, denoised)`` (the move to sigmas[i + 1]), then
    ``callback(i, x, denoised)``."""
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = denoiser(x, sigmas[i])
        x = step(i, x, denoised)
        if callback is not None:
            callback(i, x, denoised)
    return x


def sample_euler(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Optional[Callable] = None, disable: Optional[bool] = None,
                 generator: Generator = None) -> torch.Tensor:
    """Euler's method (Karras et al. 2022, Alg. 1 without the second-order correction)."""
    def euler_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        return x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])

    return integrate(euler_step, denoiser, x, sigmas, callback, disable)


def sample_euler_ancestral(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                           callback: Optional[Callable] = None, disable: Optional[bool] = None,
                           generator: Generator = None, eta: float = 1.) -> torch.Tensor:
    """Ancestral sampling with Euler steps: Euler to sigma_down, then add sigma_up noise
    (Song et al. 2021 ancestral sampler in the sigma parameterisation of Karras et al. 2022)."""
    def ancestral_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + _noise_like(x, generator) * sigma_up
        return x

    return integrate(ancestral_step, denoiser, x, sigmas, callback, disable)


def sample_heun(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                callback: Optional[Callable] = None, disable: Optional[bool] = None,
                generator: Generator = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1, i.e. Alg. 2 with S_churn = 0);
    the final step to sigma = 0 is an Euler step. 2 evaluations per step, 1 for the last."""
    def heun_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x_euler = x + d * dt
        if sigmas[i + 1] == 0:
            return x_euler
        d_2 = to_d(x_euler, sigmas[i + 1], denoiser(x_euler, sigmas[i + 1]))
        return x + (d + d_2) / 2 * dt

    return integrate(heun_step, denoiser, x, sigmas, callback, disable)


def linear_multistep_coefficient(order: int, sigmas: torch.Tensor, i: int, j: int) -> float:
    """The weight of the slope at ``sigmas[i - j]`` in an order-``order`` linear multistep step
    from ``sigmas[i]`` to ``sigmas[i + 1]``: the integral over that step of the Lagrange basis
    polynomial of node i - j on the nodes i, i - 1, ..., i - order + 1 (Adams-Bashforth on a
    non-uniform grid). The polynomial has degree order - 1, so it is integrated exactly."""
    nodes = [float(sigmas[i - k]) for k in range(order)]
    basis = np.polynomial.Polynomial([1.])
    for k, node in enumerate(nodes):
        if k != j:
            basis = basis * np.polynomial.Polynomial([-node, 1.]) / (nodes[j] - node)
    antiderivative = basis.integ()
    return float(antiderivative(float(sigmas[i + 1])) - antiderivative(nodes[0]))


def sample_lms(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
               callback: Optional[Callable] = None, disable: Optional[bool] = None,
               generator: Generator = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (k-diffusion's ``sample_lms``, diffusers' ``LMSDiscreteScheduler``):
    x_i+1 = x_i + sum_j c_ij d_i-j over the last ``order`` slopes d = dx/dsigma, the c_ij from
    ``linear_multistep_coefficient``; lower orders while the history fills up."""
    slopes = []

    def lms_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        slopes.insert(0, to_d(x, sigmas[i], denoised))
        del slopes[order:]
        current = len(slopes)
        for j, slope in enumerate(slopes):
            x = x + linear_multistep_coefficient(current, sigmas, i, j) * slope
        return x

    return integrate(lms_step, denoiser, x, sigmas, callback, disable)


def _multistep(sigmas: torch.Tensor, update: Callable) -> Callable:
    """The step of a DPM-Solver++(2M)-style sampler (Lu et al. 2022b, Alg. 2): ``update(i, x,
    denoised, h, old_denoised, h_last)`` moves x by h = log(sigma_i / sigma_i+1) with the
    previous data prediction and step (None on the first step); the step to sigma = 0 returns
    the data prediction."""
    old_denoised, h_last = None, None

    def step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        nonlocal old_denoised, h_last
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = torch.log(sigmas[i]) - torch.log(sigmas[i + 1])
            x = update(i, x, denoised, h, old_denoised, h_last)
            h_last = h
        old_denoised = denoised
        return x

    return step


def sample_dpmpp_2m(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                    callback: Optional[Callable] = None, disable: Optional[bool] = None,
                    generator: Generator = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) with lambda = -log(sigma): first order on
    the first step and on the final step to sigma = 0."""
    def update(i: int, x: torch.Tensor, denoised: torch.Tensor, h: torch.Tensor,
               old_denoised: Optional[torch.Tensor], h_last: Optional[torch.Tensor]) -> torch.Tensor:
        denoised_d = denoised
        if old_denoised is not None:
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        return (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised_d

    return integrate(_multistep(sigmas, update), denoiser, x, sigmas, callback, disable)


def sample_dpmpp_2m_sde(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                        callback: Optional[Callable] = None, disable: Optional[bool] = None,
                        generator: Generator = None, eta: float = 1.) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, appendix, second-order multistep solver of the
    diffusion SDE in data prediction): x_t = (sigma_t / sigma_s) e^-h x_s + (1 - e^-2h) D +
    sigma_t sqrt(1 - e^-2h) z, D extrapolated from the last two predictions. ``eta`` = 0 gives
    DPM-Solver++(2M) with the midpoint-style correction."""
    def update(i: int, x: torch.Tensor, denoised: torch.Tensor, h: torch.Tensor,
               old_denoised: Optional[torch.Tensor], h_last: Optional[torch.Tensor]) -> torch.Tensor:
        eta_h = eta * h
        decay = -torch.expm1(-h - eta_h)
        x = sigmas[i + 1] / sigmas[i] * torch.exp(-eta_h) * x + decay * denoised
        if old_denoised is not None:
            r = h_last / h
            x = x + 0.5 * decay * (1 / r) * (denoised - old_denoised)
        if eta:
            noise_std = sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt()
            x = x + _noise_like(x, generator) * noise_std
        return x

    return integrate(_multistep(sigmas, update), denoiser, x, sigmas, callback, disable)


SIGMA_SAMPLERS: Dict[str, Callable] = {
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "heun": sample_heun,
    "lms": sample_lms,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
}
STOCHASTIC_SAMPLERS = ("euler_a", "dpmpp_2m_sde")  # they draw fresh noise with their own eta = 1


def sigma_sampler_capabilities(algorithm: str,
                               sigma_schedule: str = "default") -> SamplerCapabilities:
    """What ``KDiffusionSampler(model, algorithm, sigma_schedule)`` honours, named as the
    registry names it (``euler``, ``euler_karras``): mask/x0 (the denoiser keeps the known
    region), both callbacks, dynamic_threshold, intermediates; not DDIM's eta or noise options."""
    if algorithm not in SIGMA_SAMPLERS:
        raise ValueError(f"unknown sigma-space sampler '{algorithm}'; expected one of "
                         f"{', '.join(SIGMA_SAMPLERS)}")
    if sigma_schedule not in SIGMA_SCHEDULES:
        raise ValueError(f"unknown sigma schedule '{sigma_schedule}'; "
                         f"expected {' or '.join(repr(k) for k in SIGMA_SCHEDULES)}")
    eta_reason = ("it is stochastic with its own eta = 1, not DDIM's eta"
                  if algorithm in STOCHASTIC_SAMPLERS else "it is deterministic")
    name = algorithm if sigma_schedule == "default" else f"{algorithm}_{sigma_schedule}"
    return SamplerCapabilities(name, BASIC_OPTIONS | {"mask", "img_callback", "dynamic_threshold"},
                               why_not=(("eta", eta_reason),))


class KDiffusionSampler(Sampler):
    """A sigma-space sampler behind the DDIM ``sample(...)`` call:
    ``KDiffusionSampler(model, algorithm="euler", sigma_schedule="default", device=None)``,
    with ``algorithm`` in ``SIGMA_SAMPLERS`` and ``sigma_schedule`` ``default`` (timesteps
    uniform down to 0) or ``karras`` (Karras et al. 2022, eq. 5), both from
    ``min(sigma_max, 80)`` (``sigma_schedule``). ``S`` steps end at sigma = 0; a step that
    leaves NaN/inf in the latents raises ``NonFiniteSampleError``. ``sample`` returns
    ``(samples, {"x_inter": [...], "pred_x0": [...]})`` like DDIM; with ``mask``/``x0`` the
    prediction is ``x0`` where the mask is 1, so that region ends
    exactly at ``x0``. DDIM's eta is refused; the ancestral/SDE samplers use eta = 1."""

    def __init__(self, model, algorithm: str = "euler", sigma_schedule: str = "default",
                 device=None, **kwargs):
        self.capabilities = sigma_sampler_capabilities(algorithm, sigma_schedule)
        super().__init__(model, device)
        self.algorithm = algorithm
        self.sigma_schedule = sigma_schedule
        self.schedule = DiscreteSigmaSchedule(
            model.alphas_cumprod.detach().to(self.device, torch.float32))

    def get_sigmas(self, steps: int) -> torch.Tensor:
        return self.schedule.get_sigmas(steps, self.sigma_schedule)

    def _sample(self, S: int, size: Tuple[int, ...], request: SimpleNamespace):
        if request.verbose:
            print(f"Data shape for {self.algorithm} ({self.sigma_schedule} sigmas) sampling is "
                  f"{size}, {S} steps")
        sigmas = self.get_sigmas(S)
        img = (randn(size, request.generator, device=self.device) if request.x_T is None
               else request.x_T)
        denoiser = ModelDenoiser(self.model, self.schedule, request.conditioning,
                                 request.unconditional_conditioning,
                                 request.unconditional_guidance_scale, request.dynamic_threshold,
                                 mask=request.mask, x0=request.x0, cond_fn=request.cond_fn)
        intermediates = {"x_inter": [img], "pred_x0": [img]}

        def on_step(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            check_finite(x, i + 1, S, self.capabilities.name)
            index = S - i - 1
            if index % request.log_every_t == 0 or index == S - 1:
                intermediates["x_inter"].append(sigma_to_vp_space(x, sigmas[i + 1].to(x)))
                intermediates["pred_x0"].append(denoised)
            if request.callback:
                request.callback(i)
            if request.img_callback:
                request.img_callback(denoised, i)

        x = vp_to_sigma_space(img, sigmas[0].to(img.dtype))
        samples = SIGMA_SAMPLERS[self.algorithm](denoiser, x, sigmas.to(img.dtype),
                                                 callback=on_step, disable=not request.verbose,
                                                 generator=request.generator)
        return denoiser.keep_known_region(samples), intermediates
