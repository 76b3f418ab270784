"""The sigma view of a discrete VP model that the modern samplers work in (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", sec. 2 and Table 1).

A VP latent x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, divided by sqrt(a_t), is x = x0 + sigma eps
with sigma_t = sqrt((1 - a_t) / a_t). Samplers then solve dx/dsigma = (x - D(x; sigma)) / sigma
with the denoiser D built from the network. Between the N discrete timesteps, log(sigma) is
interpolated linearly in t, so any sigma in [sigma_min, sigma_max] maps to a fractional timestep.

Sampling starts at ``min(sigma_max, SIGMA_MAX_CAP)``, as Karras et al. sample every model
(sec. 3 and Table 1: sigma_max = 80, or the network's maximum when lower; for the cosine-schedule
iDDPM model their sampler keeps only the discrete noise levels up to 81). A cosine schedule's
last timestep sits at sigma ~ 2e4 (its final beta is capped at 0.999); a Heun step from there to
the next grid point (sigma ~ 10) averages the slope at the far end, where the denoiser has already
changed, over the whole step, so the change is amplified by (sigma_i - sigma_i+1) / (2 sigma_i+1)
~ 1e3 and the sample is lost. SD's schedules (sigma_max 14.6) are unaffected by the cap.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch

from ldm.models.diffusion.sampling_util import (
    CondFn,
    LossGuidance,
    append_dims,
    guided_model_output,
    norm_thresholding,
)

SIGMA_SCHEDULES = ("default", "karras")  # the kinds ``DiscreteSigmaSchedule.get_sigmas`` makes
SIGMA_MAX_CAP = 80.  # the highest noise level sampling starts from (Karras et al. 2022, sec. 3)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.,
                      device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n noise levels from sigma_max to sigma_min, uniform in sigma^(1/rho) (Karras et al.
    2022, eq. 5), followed by 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=dtype)


class DiscreteSigmaSchedule:
    """sigma_t of a model's ``alphas_cumprod`` and the maps between sigma and timestep."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def sampling_sigma_max(self) -> float:
        """Where sampling starts: ``min(sigma_max, SIGMA_MAX_CAP)`` (module docstring)."""
        return min(self.sigma_max, SIGMA_MAX_CAP)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose interpolated log-sigma is log(sigma) (clamped to the
        schedule's range)."""
        log_sigmas = self.log_sigmas.to(sigma)
        log_sigma = sigma.log()
        upper = torch.searchsorted(log_sigmas, log_sigma.reshape(-1).contiguous())
        upper = upper.clamp(1, len(log_sigmas) - 1)
        lower = upper - 1
        weight = (log_sigma.reshape(-1) - log_sigmas[lower]) / (log_sigmas[upper]
                                                                - log_sigmas[lower])
        return (lower + weight.clamp(0, 1)).reshape(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma at a (fractional) timestep, log-linear between the discrete ones."""
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.to(log_sigmas.dtype)
        lower = t.floor().long().clamp(0, len(log_sigmas) - 2)
        weight = t - lower
        return ((1 - weight) * log_sigmas[lower] + weight * log_sigmas[lower + 1]).exp()

    def get_sigmas(self, n: int, kind: str = "default") -> torch.Tensor:
        """n + 1 noise levels for n steps from ``sampling_sigma_max``, ending at 0.
        ``default``: timesteps uniform from that of ``sampling_sigma_max`` (N - 1 unless
        capped) to 0; ``karras``: Karras et al. 2022, eq. 5 with rho = 7 from
        ``sampling_sigma_max`` to sigma_min."""
        if n < 1:
            raise ValueError(f"the number of sampling steps must be at least 1, got {n}")
        if kind == "karras":
            return get_sigmas_karras(n, self.sigma_min, self.sampling_sigma_max,
                                     device=self.sigmas.device, dtype=self.sigmas.dtype)
        if kind == "default":
            t_start = float(len(self.sigmas) - 1)
            if self.sigma_max > SIGMA_MAX_CAP:
                t_start = float(self.sigma_to_t(self.sigmas.new_tensor(SIGMA_MAX_CAP)))
            t = torch.linspace(t_start, 0, n, dtype=self.sigmas.dtype, device=self.sigmas.device)
            return torch.cat([self.t_to_sigma(t), self.sigmas.new_zeros(1)])
        raise ValueError(f"unknown sigma schedule '{kind}'; "
                         f"expected {' or '.join(repr(k) for k in SIGMA_SCHEDULES)}")


def vp_to_sigma_space(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A VP latent at noise level sigma, as x0 + sigma eps (multiply by sqrt(1 + sigma^2)).
    Samplers take x_T with DDIM's meaning (a VP latent at the first timestep, ~N(0, I))."""
    return x * (1 + sigma ** 2).sqrt()


def sigma_to_vp_space(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The inverse of ``vp_to_sigma_space``."""
    return x / (1 + sigma ** 2).sqrt()


class ModelDenoiser:
    """D(x; sigma) of a LatentDiffusion-like model (eps, v or x0), with classifier-free
    guidance and ``cond_fn``'s loss guidance (``LossGuidance``), optional norm thresholding of
    the prediction, and optional inpainting: where ``mask`` is 1 the prediction is ``x0``, so
    the known region flows to ``x0`` exactly.

    The network sees the VP input x / sqrt(1 + sigma^2) at the timestep of sigma; eps models
    give D = x - sigma eps, v models D = x / (1 + sigma^2) - v sigma / sqrt(1 + sigma^2)
    (Salimans & Ho 2022, v = alpha eps - sigma_vp x0). ``calls`` counts network evaluations.
    """

    def __init__(self, model, schedule: DiscreteSigmaSchedule, conditioning: Any = None,
                 unconditional_conditioning: Any = None, guidance_scale: float = 1.,
                 dynamic_threshold: Optional[float] = None, mask: Optional[torch.Tensor] = None,
                 x0: Optional[torch.Tensor] = None, cond_fn: Optional[CondFn] = None):
        if model.parameterization not in ("eps", "v", "x0"):
            raise ValueError(f"unknown parameterization '{model.parameterization}'")
        if mask is not None and x0 is None:
            raise ValueError("mask needs x0, the latent whose masked region is kept")
        self.model = model
        self.schedule = schedule
        self.guided_output = partial(guided_model_output, model.apply_model, cond=conditioning,
                                     unconditional_conditioning=unconditional_conditioning,
                                     guidance_scale=guidance_scale,
                                     guidance=LossGuidance.for_model(cond_fn, model))
        self.dynamic_threshold = dynamic_threshold
        self.mask, self.x0 = mask, x0
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype) * x.new_ones(x.shape[0])
        t = self.schedule.sigma_to_t(sigma)
        scale = append_dims(sigma, x.ndim)
        c_in = 1 / (scale ** 2 + 1).sqrt()
        out = self.guided_output(x * c_in, t)
        self.calls += 1
        if self.model.parameterization == "eps":
            denoised = x - scale * out
        elif self.model.parameterization == "v":
            denoised = x * c_in ** 2 - out * scale * c_in
        else:
            denoised = out
        if self.dynamic_threshold is not None:
            denoised = norm_thresholding(denoised, self.dynamic_threshold)
        return self.keep_known_region(denoised)

    def keep_known_region(self, x: torch.Tensor) -> torch.Tensor:
        """``x0`` where the mask is 1, ``x`` elsewhere (``x`` unchanged without a mask)."""
        if self.mask is None:
            return x
        return self.x0 * self.mask + (1. - self.mask) * x
