"""Shared building blocks of the diffusion models: noise schedules, DDIM grids, timestep
embeddings and small layer factories, with the formulas and defaults of the original code."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import repeat

from ldm.util import instantiate_from_config, mean_flat  # noqa: F401  (mean_flat: the original names it here too)


# ---------------------------------------------------------------------------------------------
# Noise schedules
# ---------------------------------------------------------------------------------------------
def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float],
                        max_beta: float = 0.999) -> np.ndarray:
    """Betas that make the cumulative product follow ``alpha_bar(t)`` for t in [0, 1]
    (Nichol & Dhariwal 2021, eq. 17), each clipped at ``max_beta``."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4,
                       linear_end: float = 2e-2, cosine_s: float = 8e-3) -> np.ndarray:
    """Beta schedule as the originals define it, returned as float64 numpy.

    ``linear`` is the "scaled linear" schedule of Stable Diffusion (linear in sqrt(beta)),
    ``cosine`` the improved-DDPM schedule, ``sqrt_linear`` linear in beta, ``sqrt`` its
    square root, ``squaredcos_cap_v2`` the Karlo/unCLIP cosine schedule.
    """
    cpu = dict(dtype=torch.float64, device="cpu")  # host maths, also while building on "meta"
    if schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, **cpu) ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, **cpu) / n_timestep + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(min=0, max=0.999)
    elif schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(
            n_timestep, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, **cpu)
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, **cpu) ** 0.5
    else:
        raise ValueError(f"unknown beta schedule '{schedule}'; expected one of linear, cosine, "
                         "sqrt_linear, sqrt, squaredcos_cap_v2")
    return betas.numpy()


def forward_process_arrays(betas: np.ndarray) -> "OrderedDict[str, np.ndarray]":
    """The arrays of q(x_t | x_0) for a beta schedule, in float64, in the order the original
    registers them (Ho et al. 2020, eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    return OrderedDict([
        ("betas", betas),
        ("alphas_cumprod", alphas_cumprod),
        ("alphas_cumprod_prev", np.append(1.0, alphas_cumprod[:-1])),
        ("sqrt_alphas_cumprod", np.sqrt(alphas_cumprod)),
        ("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - alphas_cumprod)),
        ("log_one_minus_alphas_cumprod", np.log(1.0 - alphas_cumprod)),
        ("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / alphas_cumprod)),
        ("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / alphas_cumprod - 1)),
    ])


class StepCountError(ValueError):
    """A number of sampling steps that the original DDIM grid cannot take."""


def make_ddim_timesteps(ddim_discr_method: str, num_ddim_timesteps: int,
                        num_ddpm_timesteps: int, verbose: bool = True) -> np.ndarray:
    """The DDPM indices a DDIM run visits, shifted by one as the originals do
    (so that the final alpha is that of index 1, i.e. alphas_cumprod[0] is "prev" of step 0)."""
    if ddim_discr_method == "uniform":
        stride = num_ddpm_timesteps // num_ddim_timesteps
        if stride < 1:
            raise StepCountError(f"--steps {num_ddim_timesteps} is more than the model's "
                                 f"{num_ddpm_timesteps} diffusion steps")
        ddim_timesteps = np.asarray(list(range(0, num_ddpm_timesteps, stride)))
    elif ddim_discr_method == "quad":
        ddim_timesteps = ((np.linspace(0, np.sqrt(num_ddpm_timesteps * .8),
                                       num_ddim_timesteps)) ** 2).astype(int)
    else:
        raise NotImplementedError(f"no DDIM discretization '{ddim_discr_method}'")
    steps_out = ddim_timesteps + 1
    if steps_out.max() >= num_ddpm_timesteps:
        raise StepCountError(
            f"--steps {num_ddim_timesteps} does not fit the original '{ddim_discr_method}' DDIM grid of a "
            f"{num_ddpm_timesteps}-step model (it would run past step {num_ddpm_timesteps - 1}); pick a "
            f"step count that divides {num_ddpm_timesteps}, such as 10, 20, 25 or 50")
    if verbose:
        print(f"Selected timesteps for ddim sampler: {steps_out}")
    return steps_out


def make_ddim_sampling_parameters(alphacums: np.ndarray, ddim_timesteps: np.ndarray,
                                  eta: float, verbose: bool = True):
    """alphas, previous alphas and sigmas of a DDIM run (Song et al. 2021, eq. 16).
    As in the original, the "previous" alpha of the first visited step is alphacums[0]."""
    alphas = alphacums[ddim_timesteps]
    alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    if verbose:
        print(f"Selected alphas for ddim sampler: a_t: {alphas}; a_(t-1): {alphas_prev}")
        print(f"For the chosen value of eta, which is {eta}, "
              f"this results in the following sigma_t schedule for ddim sampler {sigmas}")
    return sigmas, alphas, alphas_prev


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """Gather ``a[t]`` per batch element and shape it to broadcast against ``x_shape``."""
    b = t.shape[0]
    out = a.gather(-1, t)
    return out.reshape(b, *((1,) * (len(x_shape) - 1)))


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------
def checkpoint(func: Callable, inputs: Sequence, params: Iterable, flag: bool):
    """Run ``func(*inputs)``, recomputing activations in the backward pass when ``flag`` is set
    and gradients are needed. ``params`` is accepted for compatibility with the original."""
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------
def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """Sinusoidal timestep embedding [cos, sin] (Vaswani et al. 2017 frequencies,
    ``exp(-ln(max_period) * k / half)``), zero-padded when ``dim`` is odd."""
    if repeat_only:
        return repeat(timesteps, "b -> b d", d=dim)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


# ---------------------------------------------------------------------------------------------
# Layer helpers
# ---------------------------------------------------------------------------------------------
def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of ``module`` by ``scale`` and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (input and affine weights) and cast back to the input dtype,
    so that half/bfloat16 models normalise without overflow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: 32-group GroupNorm, eps 1e-5."""
    return GroupNorm32(32, channels)


class SiLU(nn.Module):
    """x * sigmoid(x); kept for configs and code that name it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D convolution."""
    layers = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Module:
    """A linear layer."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D average pooling."""
    layers = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in layers:
        raise ValueError(f"unsupported dimensions: {dims}")
    return layers[dims](*args, **kwargs)


def noise_like(shape: Sequence[int], device, repeat: bool = False) -> torch.Tensor:
    """Standard normal noise from the global RNG (in the default dtype); with ``repeat`` one sample
    shared across the batch (:func:`ldm.models.diffusion.sampling_util.randn`)."""
    from ldm.models.diffusion.sampling_util import randn

    return randn(shape, None, device, torch.get_default_dtype(), repeat=repeat)


class HybridConditioner(nn.Module):
    """Two conditioning encoders whose outputs feed concat and cross-attention conditioning."""

    def __init__(self, c_concat_config, c_crossattn_config):
        super().__init__()
        self.concat_conditioner = instantiate_from_config(c_concat_config)
        self.crossattn_conditioner = instantiate_from_config(c_crossattn_config)

    def forward(self, c_concat, c_crossattn):
        c_concat = self.concat_conditioner(c_concat)
        c_crossattn = self.crossattn_conditioner(c_crossattn)
        return {"c_concat": [c_concat], "c_crossattn": [c_crossattn]}
