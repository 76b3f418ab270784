"""Gaussian diffusion for sampling Karlo's models, after guided-diffusion (Ho et al. 2020,
"Denoising Diffusion Probabilistic Models"; Nichol & Dhariwal 2021, "Improved Denoising Diffusion
Probabilistic Models"; Song et al. 2021, "Denoising Diffusion Implicit Models").

The schedule's coefficients are kept as float64 CPU tensors and read out as float32 on the
sample's device (so the maths runs on MPS too, which has no float64). Only sampling is here;
training losses are not part of this package.
"""
from __future__ import annotations

import enum
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from ldm.modules.diffusionmodules.util import forward_process_arrays, make_beta_schedule

NoiseFn = Callable[[Sequence[int]], torch.Tensor]


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """The betas of a named guided-diffusion schedule: ``linear`` (Ho et al., 0.0001..0.02 for 1000
    steps, scaled by 1000 / steps) or ``squaredcos_cap_v2`` (Nichol & Dhariwal eq. 17, s = 0.008)."""
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return make_beta_schedule("sqrt_linear", num_diffusion_timesteps, linear_start=scale * 0.0001,
                                  linear_end=scale * 0.02)  # "sqrt_linear" is linear in beta
    if schedule_name == "squaredcos_cap_v2":
        return make_beta_schedule("squaredcos_cap_v2", num_diffusion_timesteps)
    raise NotImplementedError(f"unknown beta schedule: {schedule_name}")


class ModelMeanType(enum.Enum):
    """What the network predicts."""
    PREVIOUS_X = enum.auto()
    START_X = enum.auto()
    EPSILON = enum.auto()


class ModelVarType(enum.Enum):
    """The reverse-process variance: the posterior's (``FIXED_SMALL``), beta (``FIXED_LARGE``), or
    predicted by the network (``LEARNED`` log-variance, ``LEARNED_RANGE`` between the two)."""
    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()
    KL = enum.auto()
    RESCALED_KL = enum.auto()

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _extract_into_tensor(arr: torch.Tensor, timesteps: torch.Tensor, broadcast_shape: Sequence[int]) -> torch.Tensor:
    """``arr[timesteps]`` as float32 on the timesteps' device, broadcast to ``broadcast_shape``."""
    values = arr[timesteps.detach().cpu().long()].float().to(timesteps.device)
    return values.view(-1, *([1] * (len(broadcast_shape) - 1))).expand(*broadcast_shape)


def standard_normal(device: torch.device) -> NoiseFn:
    """Noise from torch's global generator on ``device``."""
    return lambda shape: torch.randn(*shape, device=device)


class GaussianDiffusion:
    """The forward process q(x_t | x_0) of ``betas`` and the reverse steps p(x_{t-1} | x_t).

    ``noise_fn`` (sampling methods) draws standard normal noise of a given shape; it lets callers
    make every draw from their own generators (default: torch's global generator).
    """

    def __init__(self, *, betas, model_mean_type: ModelMeanType, model_var_type: ModelVarType,
                 loss_type: LossType):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        betas = torch.as_tensor(np.asarray(betas, dtype=np.float64), device="cpu")
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D sequence of values in (0, 1]")
        self.num_timesteps = int(betas.shape[0])
        self._set_coefficients(betas)

    def _set_coefficients(self, betas: torch.Tensor) -> None:
        """The closed forms of Ho et al. eq. 4 (q(x_t | x_0)) and eq. 7 (the posterior q(x_{t-1} | x_t, x_0))."""
        for name, array in forward_process_arrays(betas.numpy()).items():
            setattr(self, name, torch.from_numpy(array))
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.alphas_cumprod_next = torch.cat([abar[1:], torch.zeros(1, dtype=torch.float64)])
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # log(0) at t = 0: the first entry is replaced by the second, as guided-diffusion does (a
        # one-step process has no second: beta_0 stands in; no noise is added at t = 0 anyway)
        self._variance_at_0 = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([self._variance_at_0, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar)

    # -- forward process --------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. eq. 4)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (_extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)."""
        mean = (_extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return ((_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    # -- reverse process --------------------------------------------------------------------------
    def _model_variance(self, x: torch.Tensor, t: torch.Tensor, var_values: Optional[torch.Tensor]):
        """(variance, log-variance) of p(x_{t-1} | x_t) for the configured variance type."""
        if self.model_var_type == ModelVarType.FIXED_SMALL:
            return (_extract_into_tensor(self.posterior_variance, t, x.shape),
                    _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape))
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            # beta_t, with the posterior variance at t = 0 (a better decoder likelihood)
            large = torch.cat([self._variance_at_0, self.betas[1:]])
            return _extract_into_tensor(large, t, x.shape), _extract_into_tensor(torch.log(large), t, x.shape)
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            # Nichol & Dhariwal eq. 15: v in [-1, 1] interpolates log beta_t and log beta~_t
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract_into_tensor(torch.log(self.betas), t, x.shape)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            return torch.exp(log_variance), log_variance
        raise NotImplementedError(self.model_var_type)

    def p_mean_variance(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        model_kwargs: Optional[dict] = None) -> Dict[str, torch.Tensor]:
        """Apply ``model`` and return the mean, variance, log-variance of p(x_{t-1} | x_t) and the
        x_0 prediction (``denoised_fn`` then, with ``clip_denoised``, a clamp to [-1, 1] applied to it)."""
        output = model(x, t, **(model_kwargs or {}))
        var_values = None
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            output, var_values = torch.split(output, x.shape[1], dim=1)
        variance, log_variance = self._model_variance(x, t, var_values)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            x0 = denoised_fn(x0) if denoised_fn is not None else x0
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = process_xstart(output)
        elif self.model_mean_type == ModelMeanType.EPSILON:
            pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, output))
        else:
            raise NotImplementedError(self.model_mean_type)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True, denoised_fn=None,
                 model_kwargs: Optional[dict] = None, noise_fn: Optional[NoiseFn] = None) -> Dict[str, torch.Tensor]:
        """One ancestral step: x_{t-1} = mean + exp(log_variance / 2) * z, without noise at t = 0."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = (noise_fn or standard_normal(x.device))(x.shape).to(x.device, x.dtype)
        sample = out["mean"] + _nonzero(t, x) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True, denoised_fn=None,
                    model_kwargs: Optional[dict] = None, eta: float = 0.0,
                    noise_fn: Optional[NoiseFn] = None) -> Dict[str, torch.Tensor]:
        """One DDIM step (Song et al. eq. 12) from the model's x_0 prediction."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        noise = (noise_fn or standard_normal(x.device))(x.shape).to(x.device, x.dtype)
        return {"sample": mean + _nonzero(t, x) * sigma * noise, "pred_xstart": out["pred_xstart"]}

    def _loop(self, step, model, shape, noise, device, noise_fn, **step_kwargs) -> Iterator[Dict[str, torch.Tensor]]:
        """Run ``step`` from t = T - 1 down to 0, starting at ``noise`` (else a draw of ``noise_fn``)."""
        if device is None:
            device = next(model.parameters()).device
        noise_fn = noise_fn or standard_normal(device)
        img = noise if noise is not None else noise_fn(tuple(shape)).to(device)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                out = step(model, img, t, noise_fn=noise_fn, **step_kwargs)
            yield out
            img = out["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  model_kwargs=None, device=None, noise_fn: Optional[NoiseFn] = None):
        """Ancestral sampling, yielding each step's ``{"sample", "pred_xstart"}``."""
        yield from self._loop(self.p_sample, model, shape, noise, device, noise_fn, clip_denoised=clip_denoised,
                              denoised_fn=denoised_fn, model_kwargs=model_kwargs)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                      device=None, noise_fn: Optional[NoiseFn] = None) -> torch.Tensor:
        """The final sample of :meth:`p_sample_loop_progressive`."""
        *_, final = self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, model_kwargs,
                                                   device, noise_fn)
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     model_kwargs=None, device=None, eta=0.0, noise_fn: Optional[NoiseFn] = None):
        """DDIM sampling, yielding each step's ``{"sample", "pred_xstart"}``."""
        yield from self._loop(self.ddim_sample, model, shape, noise, device, noise_fn, clip_denoised=clip_denoised,
                              denoised_fn=denoised_fn, model_kwargs=model_kwargs, eta=eta)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                         device=None, eta=0.0, noise_fn: Optional[NoiseFn] = None) -> torch.Tensor:
        """The final sample of :meth:`ddim_sample_loop_progressive`."""
        *_, final = self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, model_kwargs,
                                                      device, eta, noise_fn)
        return final["sample"]


def _nonzero(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 where t > 0, 0 at the last step (which adds no noise), shaped to broadcast over ``x``."""
    return (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
