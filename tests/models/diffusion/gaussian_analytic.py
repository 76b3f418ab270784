"""An exact "diffusion model" for Gaussian data, for testing samplers against closed forms
(DESIGN.md section 4).

Data x0 ~ N(mu, s^2 I), forward process x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. Then
E[eps | x_t] = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / v_t and
E[x0 | x_t] = mu + sqrt(a_t) s^2 (x_t - sqrt(a_t) mu) / v_t with v_t = a_t s^2 + 1 - a_t, and the
probability-flow ODE is solved exactly by x(t) = sqrt(a_t) mu + (x_T - sqrt(a_T) mu) sqrt(v_t / v_T).

The object implements the LatentDiffusion interface samplers use. The conditioning sets mu: a
tensor, a list of tensors, or a dict of such (all summed), so the model is linear in it and
guidance at scale w equals the conditional model with mu_u + w (mu_c - mu_u).
Fractional timesteps interpolate the discrete schedule like the sampler under test does:
``log_alpha`` (DPM-Solver: log sqrt(a) piecewise linear in t) or ``log_sigma`` (sigma-space
samplers: log sqrt((1 - a) / a) piecewise linear in t).
"""
from __future__ import annotations

import math

import torch

from ldm.modules.diffusionmodules.util import make_beta_schedule


def linear_alphas_cumprod(num_timesteps: int = 1000) -> torch.Tensor:
    """alphas_cumprod of the SD "linear" schedule, rounded to float32 as model buffers are."""
    betas = torch.as_tensor(make_beta_schedule("linear", num_timesteps), dtype=torch.float64)
    return torch.cumprod(1. - betas, 0).to(torch.float32)


class GaussianDataModel:
    def __init__(self, data_std: float = 0.5, parameterization: str = "eps",
                 interpolation: str = "log_alpha", dtype: torch.dtype = torch.float64,
                 num_timesteps: int = 1000):
        betas = torch.as_tensor(make_beta_schedule("linear", num_timesteps), dtype=torch.float32)
        alphas_cumprod = linear_alphas_cumprod(num_timesteps)
        self.num_timesteps = num_timesteps
        self.betas = betas.to(dtype)
        self.alphas_cumprod = alphas_cumprod.to(dtype)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1), alphas_cumprod[:-1]]).to(dtype)
        self.parameterization = parameterization
        self.data_std = data_std
        self.interpolation = interpolation
        self.device = torch.device("cpu")
        self.calls = 0
        self.seen_timesteps = []

    # -- schedule ---------------------------------------------------------------------------
    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """a_t for integer t, or interpolated as the sampler under test interpolates."""
        ac = self.alphas_cumprod.to(torch.float64)
        if not torch.is_floating_point(t):
            return ac[t]
        t = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        if self.interpolation == "log_alpha":
            log_alpha = 0.5 * ac.log()
            return torch.exp(2 * ((1 - w) * log_alpha[lo] + w * log_alpha[lo + 1]))
        log_sigma = 0.5 * ((1 - ac) / ac).log()
        sigma = torch.exp((1 - w) * log_sigma[lo] + w * log_sigma[lo + 1])
        return 1. / (1. + sigma ** 2)

    def _a(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar_at(t).to(x.dtype).reshape(-1, *((1,) * (x.ndim - 1)))

    # -- the model --------------------------------------------------------------------------
    @staticmethod
    def mean_of(cond, like: torch.Tensor) -> torch.Tensor:
        if cond is None:
            return torch.zeros_like(like)
        if isinstance(cond, dict):
            return sum(GaussianDataModel.mean_of(v, like) for v in cond.values())
        if isinstance(cond, (list, tuple)):
            return sum(GaussianDataModel.mean_of(v, like) for v in cond)
        return cond.to(like.dtype).expand_as(like)

    def posterior(self, x: torch.Tensor, t: torch.Tensor, cond):
        a = self._a(t, x)
        mu = self.mean_of(cond, x)
        v = a * self.data_std ** 2 + 1 - a
        centred = x - a.sqrt() * mu
        eps = (1 - a).sqrt() * centred / v
        x0 = mu + a.sqrt() * self.data_std ** 2 * centred / v
        return a, eps, x0

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        self.calls += 1
        self.seen_timesteps.append(t.detach().clone())
        a, eps, x0 = self.posterior(x_noisy, t, cond)
        if self.parameterization == "eps":
            return eps
        if self.parameterization == "x0":
            return x0
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def predict_eps_from_z_and_v(self, x_t, t, v):
        a = self._a(t, x_t)
        return a.sqrt() * v + (1 - a).sqrt() * x_t

    def predict_start_from_z_and_v(self, x_t, t, v):
        a = self._a(t, x_t)
        return a.sqrt() * x_t - (1 - a).sqrt() * v

    def q_sample(self, x_start, t, noise=None):
        noise = torch.randn_like(x_start) if noise is None else noise
        a = self._a(t, x_start)
        return a.sqrt() * x_start + (1 - a).sqrt() * noise

    # -- exact answers ----------------------------------------------------------------------
    def exact_flow(self, x_start: torch.Tensor, a_start: float, a_end: float,
                   mu: float = 0.) -> torch.Tensor:
        """The probability-flow ODE solution at a_end from x_start at a_start."""
        s2 = self.data_std ** 2
        ratio = math.sqrt((a_end * s2 + 1 - a_end) / (a_start * s2 + 1 - a_start))
        return math.sqrt(a_end) * mu + (x_start - math.sqrt(a_start) * mu) * ratio

    def alpha_bar(self, index: int) -> float:
        return float(self.alphas_cumprod[index])


def sample_with_diffusers_scheduler(scheduler, model: GaussianDataModel, x_T: torch.Tensor,
                                    steps: int) -> torch.Tensor:
    """x_0 from a diffusers scheduler (the peer) driven by the model's eps prediction from x_T."""
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        eps = model.apply_model(x, torch.full((x.shape[0],), int(t)), None)
        x = scheduler.step(eps, t, x).prev_sample
    return x


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).norm() / reference.norm())


def fitted_order(steps, errors) -> float:
    """Least-squares slope of log(error) against log(steps), negated: the observed order."""
    logs = torch.tensor([math.log(s) for s in steps], dtype=torch.float64)
    loge = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    logs = logs - logs.mean()
    return float(-(logs * (loge - loge.mean())).sum() / (logs ** 2).sum())


def format_table(title: str, steps, rows) -> str:
    """rows: {name: [(error, model_evaluations), ...]} -> a printable table whose last column
    is the order fitted over all columns."""
    width = max(len("sampler"), *(len(name) for name in rows)) + 2
    lines = [title, "sampler".ljust(width) + "".join(f"{s:>18}" for s in steps) + "   order"]
    for name, results in rows.items():
        errors = [e for e, _ in results]
        cells = "".join(f"{e:>11.2e} ({n:>3})" for e, n in results)
        lines.append(name.ljust(width) + cells + f"   {fitted_order(steps, errors):5.2f}")
    return "\n".join(lines)
