"""The noise schedule DPM-Solver works with (Lu et al. 2022, sec. 2 and appendix D): a VP
diffusion q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) in continuous time, from a discrete
schedule or the continuous linear/cosine ones, with the half-log-SNR lambda_t and its inverse."""
from __future__ import annotations

import math
from typing import Optional

import torch


def interpolate_fn(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through the knots ``(xp, yp)`` (each [C, K], xp increasing),
    extended linearly beyond the end knots; differentiable. ``x`` is [N, C]; returns [N, C]."""
    knots = xp.shape[1]
    query = x.transpose(0, 1).contiguous()
    upper = torch.searchsorted(xp.contiguous(), query).clamp(1, knots - 1)
    lower = upper - 1
    x_lo, x_hi = torch.gather(xp, 1, lower), torch.gather(xp, 1, upper)
    y_lo, y_hi = torch.gather(yp, 1, lower), torch.gather(yp, 1, upper)
    weight = (query - x_lo) / (x_hi - x_lo)
    return ((1 - weight) * y_lo + weight * y_hi).transpose(0, 1)


class NoiseScheduleVP:
    """The forward process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) of a VP diffusion, with
    alpha_t^2 + sigma_t^2 = 1, in continuous time.

    ``discrete``: from ``betas`` or ``alphas_cumprod`` (N values); log(alpha_t) is interpolated
    piecewise-linearly over t_n = (n + 1) / N. ``linear``: the VP-SDE of Song et al. 2021
    (beta(t) = beta_0 + t (beta_1 - beta_0)). ``cosine``: Nichol & Dhariwal 2021 (T = 0.9946).
    """

    def __init__(self, schedule: str = "discrete", betas: Optional[torch.Tensor] = None,
                 alphas_cumprod: Optional[torch.Tensor] = None, continuous_beta_0: float = 0.1,
                 continuous_beta_1: float = 20.):
        if schedule not in ("discrete", "linear", "cosine"):
            raise ValueError(f"unsupported noise schedule '{schedule}'; "
                             "expected 'discrete', 'linear' or 'cosine'")
        self.schedule = schedule
        if schedule == "discrete":
            if betas is not None:
                log_alphas = 0.5 * torch.log(1 - torch.as_tensor(betas)).cumsum(dim=0)
            elif alphas_cumprod is not None:
                log_alphas = 0.5 * torch.log(torch.as_tensor(alphas_cumprod))
            else:
                raise ValueError("a discrete noise schedule needs betas or alphas_cumprod")
            self.total_N = len(log_alphas)
            self.T = 1.
            self.t_array = torch.linspace(0., 1., self.total_N + 1,
                                          dtype=log_alphas.dtype)[1:].reshape((1, -1))
            self.log_alpha_array = log_alphas.reshape((1, -1))
        else:
            self.total_N = 1000
            self.beta_0 = continuous_beta_0
            self.beta_1 = continuous_beta_1
            self.cosine_s = 0.008
            self.cosine_log_alpha_0 = math.log(math.cos(self.cosine_s / (1. + self.cosine_s)
                                                        * math.pi / 2.))
            self.T = 0.9946 if schedule == "cosine" else 1.

    @property
    def dtype(self) -> torch.dtype:
        return self.log_alpha_array.dtype if self.schedule == "discrete" else torch.float32

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha_t)."""
        if self.schedule == "discrete":
            return interpolate_fn(t.reshape((-1, 1)), self.t_array.to(t),
                                  self.log_alpha_array.to(t)).reshape((-1,))
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        log_alpha = torch.log(torch.cos((t + self.cosine_s) / (1. + self.cosine_s) * math.pi / 2.))
        return log_alpha - self.cosine_log_alpha_0

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1. - torch.exp(2. * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t) - log(sigma_t), the half-log-SNR."""
        log_mean_coeff = self.marginal_log_mean_coeff(t)
        log_std = 0.5 * torch.log(1. - torch.exp(2. * log_mean_coeff))
        return log_mean_coeff - log_std

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The time t whose half-log-SNR is ``lamb``."""
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2. * lamb)
        if self.schedule == "linear":
            # root of 0.25 (b1 - b0) t^2 + 0.5 b0 t + log_alpha = 0, rationalised for stability
            tmp = -4. * (self.beta_1 - self.beta_0) * log_alpha
            delta = self.beta_0 ** 2 + tmp
            return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        if self.schedule == "discrete":
            t = interpolate_fn(log_alpha.reshape((-1, 1)),
                               torch.flip(self.log_alpha_array.to(lamb), [1]),
                               torch.flip(self.t_array.to(lamb), [1]))
            return t.reshape((-1,))
        return (torch.arccos(torch.exp(log_alpha + self.cosine_log_alpha_0))
                * 2. * (1. + self.cosine_s) / math.pi - self.cosine_s)
