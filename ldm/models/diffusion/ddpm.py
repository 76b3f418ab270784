"""Gaussian diffusion models: pixel-space DDPM (Ho et al. 2020) and the latent diffusion model of
Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"), with the
constructor parameters, buffers, state-dict keys and formulas of the original code.

The task models (inpainting, depth, upscaling, unCLIP) live in
:mod:`ldm.models.diffusion.latent_tasks`; they are importable from here as well, because the
original configs name them ``ldm.models.diffusion.ddpm.<Name>``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from ldm.models.diffusion.image_logging import DiffusionImageLogging
from ldm.models.lazy_lightning import LazyLightningModule
from ldm.modules.diffusionmodules.util import (
    extract_into_tensor,
    forward_process_arrays,
    make_beta_schedule,
    noise_like,
)
from ldm.modules.ema import LitEma
from ldm.modules.freezing import disabled_train  # noqa: F401  (the original names it here)
from ldm.util import CheckpointError, count_params, default, exists, instantiate_from_config, load_checkpoint

__conditioning_keys__ = {"concat": "c_concat", "crossattn": "c_crossattn", "adm": "y"}

CONDITIONING_KEYS = (None, "concat", "crossattn", "hybrid", "adm", "hybrid-adm", "crossattn-adm")
PARAMETERIZATIONS = ("eps", "x0", "v")
# Batch keys whose values are handed to the conditioning encoder as they are (strings, boxes).
RAW_CONDITIONING_KEYS = ("caption", "coordinates_bbox", "txt")


# ---------------------------------------------------------------------------------------------
# Module helpers
# ---------------------------------------------------------------------------------------------
def uniform_on_device(r1: float, r2: float, shape, device) -> torch.Tensor:
    """Uniform samples between ``r2`` and ``r1``."""
    return (r1 - r2) * torch.rand(*shape, device=device) + r2


def fit_tensor_to_shape(old: torch.Tensor, new_shape: torch.Size) -> torch.Tensor:
    """Tile ``old`` cyclically along its first two axes to ``new_shape`` (``make_it_fit``).

    As in the original, 2+-D tensors are divided per input column by one plus the number of
    times that column of ``old`` is reused, so that the larger layer starts near the old one."""
    if old.dim() != len(new_shape) or tuple(old.shape[2:]) != tuple(new_shape[2:]):
        raise CheckpointError(f"make_it_fit can only grow the first two axes, not {tuple(old.shape)} "
                              f"-> {tuple(new_shape)}")
    rows = torch.arange(new_shape[0]) % old.shape[0]
    if old.dim() == 1:
        return old[rows].clone()
    cols = torch.arange(new_shape[1]) % old.shape[1]
    tiled = old.index_select(0, rows).index_select(1, cols).clone()
    uses_plus_one = 1.0 + torch.bincount(cols, minlength=old.shape[1]).to(tiled.dtype)
    divisor = uses_plus_one[cols].reshape(1, -1, *((1,) * (old.dim() - 2)))
    return tiled / divisor


class DiffusionWrapper(LazyLightningModule):
    """Holds the denoising network (``diffusion_model``) and routes the conditioning to it:
    ``concat`` joins tensors to the input channels, ``crossattn`` passes a context for the
    attention layers (joined along the token axis), ``adm`` passes a class/embedding vector ``y``."""

    def __init__(self, diff_model_config, conditioning_key: Optional[str]):
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"unknown conditioning_key '{conditioning_key}'; expected one of "
                             f"{', '.join(str(k) for k in CONDITIONING_KEYS)}")
        # SAI configs may put ``sequential_crossattn`` beside ``target``: pass the context list
        # to the UNet as it is instead of joining it (the caller's config is left unchanged).
        self.sequential_cross_attn = bool(diff_model_config.get("sequential_crossattn", False))
        if "sequential_crossattn" in diff_model_config:
            diff_model_config = {k: v for k, v in diff_model_config.items() if k != "sequential_crossattn"}
        self.diffusion_model = instantiate_from_config(diff_model_config)
        self.conditioning_key = conditioning_key

    def _context(self, c_crossattn: list):
        return c_crossattn if self.sequential_cross_attn else torch.cat(c_crossattn, 1)

    def _require_adm(self, c_adm) -> None:
        if c_adm is None:
            raise ValueError(f"conditioning_key '{self.conditioning_key}' needs c_adm "
                             "(the class / embedding vector), got None")

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: list = None,
                c_crossattn: list = None, c_adm: torch.Tensor = None):
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        if key == "concat":
            return self.diffusion_model(torch.cat([x] + list(c_concat), dim=1), t)
        if key == "crossattn":
            context = self._context(c_crossattn)
            if hasattr(self, "scripted_diffusion_model"):
                return self.scripted_diffusion_model(x, t, context)
            return self.diffusion_model(x, t, context=context)
        if key == "hybrid":
            return self.diffusion_model(torch.cat([x] + list(c_concat), dim=1), t,
                                        context=torch.cat(c_crossattn, 1))
        if key == "hybrid-adm":
            self._require_adm(c_adm)
            return self.diffusion_model(torch.cat([x] + list(c_concat), dim=1), t,
                                        context=torch.cat(c_crossattn, 1), y=c_adm)
        if key == "crossattn-adm":
            self._require_adm(c_adm)
            return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1), y=c_adm)
        return self.diffusion_model(x, t, y=c_crossattn[0])  # "adm"


# ---------------------------------------------------------------------------------------------
# DDPM in pixel space
# ---------------------------------------------------------------------------------------------
class DDPM(DiffusionImageLogging, LazyLightningModule):
    """Denoising diffusion probabilistic model with a fixed variance schedule, in pixel space
    (Ho et al. 2020). Predicts the noise (``eps``), the clean image (``x0``) or the velocity
    ``v`` of Salimans & Ho 2022 (``parameterization``)."""

    def __init__(self, unet_config, timesteps=1000, beta_schedule="linear", loss_type="l2",
                 ckpt_path=None, ignore_keys=[], load_only_unet=False, monitor="val/loss",
                 use_ema=True, first_stage_key="image", image_size=256, channels=3,
                 log_every_t=100, clip_denoised=True, linear_start=1e-4, linear_end=2e-2,
                 cosine_s=8e-3, given_betas=None, original_elbo_weight=0., v_posterior=0.,
                 l_simple_weight=1., conditioning_key=None, parameterization="eps",
                 scheduler_config=None, use_positional_encodings=False, learn_logvar=False,
                 logvar_init=0., make_it_fit=False, ucg_training=None, reset_ema=False,
                 reset_num_ema_updates=False, lora_config=None, noise_offset=0.):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of eps, x0, v; got '{parameterization}'")
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got '{loss_type}'")
        self.parameterization = parameterization
        print(f"{self.__class__.__name__}: Running in {self.parameterization}-prediction mode")
        self.cond_stage_model = None
        self.clip_denoised = clip_denoised
        self.log_every_t = log_every_t
        self.first_stage_key = first_stage_key
        self.image_size, self.channels = image_size, channels
        self.use_positional_encodings = use_positional_encodings
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        self.lora_layers, self.lora_config = None, None
        count_params(self.model, verbose=True)
        self.use_ema = use_ema
        if self.use_ema:
            self.model_ema = LitEma(self.model)
            print(f"Keeping EMAs of {len(list(self.model_ema.buffers()))}.")
        self.use_scheduler = scheduler_config is not None
        if self.use_scheduler:
            self.scheduler_config = scheduler_config
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        if noise_offset < 0:
            raise ValueError(f"noise_offset must be >= 0, got {noise_offset}")
        self.noise_offset = noise_offset
        if monitor is not None:
            self.monitor = monitor
        self.make_it_fit = make_it_fit
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)
        self._reset_ema_after_loading(ckpt_path, reset_ema, reset_num_ema_updates)
        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
        self.loss_type = loss_type
        self.learn_logvar = learn_logvar
        logvar = torch.full(fill_value=logvar_init, size=(self.num_timesteps,))
        self.logvar = nn.Parameter(logvar, requires_grad=True) if self.learn_logvar else logvar
        self.ucg_training = ucg_training or dict()
        if self.ucg_training:
            self.ucg_prng = np.random.RandomState()
        self.add_lora_layers(lora_config)

    def _reset_ema_after_loading(self, ckpt_path, reset_ema: bool, reset_num_ema_updates: bool) -> None:
        """``reset_ema``: restart the EMA from the loaded weights (for EMA-only checkpoints);
        ``reset_num_ema_updates``: restart the EMA decay warm-up."""
        if (reset_ema or reset_num_ema_updates) and not self.use_ema:
            raise ValueError("reset_ema / reset_num_ema_updates need use_ema: True")
        if reset_ema:
            if ckpt_path is None:
                raise ValueError("reset_ema needs a ckpt_path to take the weights from")
            print("Resetting ema to pure model weights. This is useful when restoring from an ema-only checkpoint.")
            self.model_ema = LitEma(self.ema_module())
        if reset_num_ema_updates:
            print(" +++++++++++ WARNING: RESETTING NUM_EMA UPDATES TO ZERO +++++++++++ ")
            self.model_ema.reset_num_updates()

    # -- noise schedule --------------------------------------------------------------------
    def register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000,
                          linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3) -> None:
        """Register the 12 schedule buffers (float64 maths, stored float32) and the
        non-persistent ``lvlb_weights`` (Ho et al. 2020, eqs. 4, 6, 7 and 12)."""
        if exists(given_betas):
            betas = np.asarray(given_betas, dtype=np.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start,
                                           linear_end=linear_end, cosine_s=cosine_s)
        arrays = forward_process_arrays(betas)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        alphas = 1.0 - betas
        abar, abar_prev = arrays["alphas_cumprod"], arrays["alphas_cumprod_prev"]
        # Posterior q(x_{t-1} | x_t, x_0), eqs. 6-7; its variance is 0 at t = 0, hence the clip.
        posterior_variance = ((1 - self.v_posterior) * betas * (1.0 - abar_prev) / (1.0 - abar)
                              + self.v_posterior * betas)
        arrays["posterior_variance"] = posterior_variance
        arrays["posterior_log_variance_clipped"] = np.log(np.maximum(posterior_variance, 1e-20))
        arrays["posterior_mean_coef1"] = betas * np.sqrt(abar_prev) / (1.0 - abar)
        arrays["posterior_mean_coef2"] = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        for name, array in arrays.items():
            self.register_buffer(name, torch.tensor(array, dtype=torch.float32))
        self._schedule_buffer_names = (*arrays, "lvlb_weights")
        lvlb_weights = self._lvlb_weights(arrays)
        if torch.isnan(lvlb_weights).all():
            raise ValueError("the noise schedule gives NaN variational-bound weights everywhere")
        self.register_buffer("lvlb_weights", lvlb_weights.to(self.betas.device), persistent=False)

    def _apply(self, fn, recurse=True):
        """Casts to float16/bfloat16 (``.half()``, ``.to(torch.bfloat16)``) move the noise schedule
        but leave it in float32, as samplers and diffusers' schedulers keep it: rounded to bfloat16,
        ``alphas_cumprod`` at t = 0 becomes 1 and DDIM's coefficients NaN."""
        schedule = {name: self._buffers[name] for name in getattr(self, "_schedule_buffer_names", ())
                    if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, before in schedule.items():
            after = self._buffers[name]
            if after.dtype in (torch.float16, torch.bfloat16) and before.dtype == torch.float32:
                self._buffers[name] = before.to(after.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A checkpoint saved in float16/bfloat16 holds the schedule rounded to that precision
        (``alphas_cumprod`` of a cosine schedule underflows to 0 in float16, and every sampler
        then divides by it). Where the stored buffer is the config's schedule at that precision,
        keep the float32 values computed from the config; a schedule that differs is loaded as
        stored."""
        narrow = (torch.float16, torch.bfloat16)
        computed = {}
        for name in getattr(self, "_schedule_buffer_names", ()):
            stored, own = state_dict.get(prefix + name), self._buffers.get(name)
            if (isinstance(stored, torch.Tensor) and stored.dtype in narrow and own is not None
                    and own.dtype == torch.float32 and stored.shape == own.shape
                    and torch.equal(own.to(stored.dtype).cpu(), stored.cpu())):
                computed[name] = own.clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name, values in computed.items():
            self._buffers[name] = values.to(self._buffers[name].device)

    def _lvlb_weights(self, arrays: Dict[str, np.ndarray]) -> torch.Tensor:
        """Per-step weights of the variational bound, computed (on the host) in float32 from the
        float32 buffers, as the original does; step 0 (infinite for eps) copies step 1."""
        f32 = {name: torch.tensor(array, dtype=torch.float32, device="cpu") for name, array in arrays.items()}
        if self.parameterization == "eps":
            alphas = torch.tensor(1.0 - arrays["betas"], dtype=torch.float32, device="cpu")
            weights = f32["betas"] ** 2 / (2 * f32["posterior_variance"] * alphas * (1 - f32["alphas_cumprod"]))
        elif self.parameterization == "x0":
            abar = f32["alphas_cumprod"]
            weights = 0.5 * torch.sqrt(abar) / (2.0 * 1 - abar)  # sic: (2 - abar), as the original
        else:
            weights = torch.ones_like(f32["betas"])
        weights[0] = weights[1]
        return weights

    # -- forward process and parameterizations ------------------------------------------------
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
        mean = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho et al. 2020, eq. 4)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps (eq. 4 solved for x_0)."""
        return (extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)

    def get_v(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4)."""
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x.shape) * noise
                - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x.shape) * x)

    def predict_start_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_t.shape) * x_t
                - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v)

    def predict_eps_from_z_and_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_t.shape) * v
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * x_t)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = (extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    def _start_from_model_output(self, x: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "eps":
            return self.predict_start_from_noise(x, t=t, noise=model_out)
        if self.parameterization == "v":
            return self.predict_start_from_z_and_v(x, t, model_out)
        return model_out

    def _training_target(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "v":
            return self.get_v(x_start, noise, t)
        return x_start

    # -- ancestral sampling ---------------------------------------------------------------
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """The network's output for ``x_noisy`` at ``t``: the call every sampler makes, as on
        LatentDiffusion, so that DDIM, PLMS, DPM-Solver and the sigma samplers run on pixel-space
        models too (the original DDPM has no ``apply_model``: only ``p_sample_loop`` sampled it).
        A DDPM is unconditional: ``cond`` must be None."""
        if cond is not None:
            raise ValueError("a pixel-space DDPM is unconditional: apply_model takes cond=None, "
                             f"got {type(cond).__name__}")
        return self.model(x_noisy, t)

    def p_mean_variance(self, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool):
        """Mean and variance of p(x_{t-1} | x_t): the posterior around the predicted x_0."""
        x_recon = self._start_from_model_output(x, t, self.model(x, t))
        if clip_denoised:
            x_recon.clamp_(-1.0, 1.0)
        return self.q_posterior(x_start=x_recon, x_t=x, t=t)

    @torch.no_grad()
    def p_sample(self, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True,
                 repeat_noise: bool = False) -> torch.Tensor:
        """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2); no noise at t = 0."""
        model_mean, _, model_log_variance = self.p_mean_variance(x=x, t=t, clip_denoised=clip_denoised)
        noise = noise_like(x.shape, x.device, repeat_noise)
        nonzero_mask = (1 - (t == 0).float()).reshape(x.shape[0], *((1,) * (x.dim() - 1)))
        return model_mean + nonzero_mask * (0.5 * model_log_variance).exp() * noise

    @torch.no_grad()
    def p_sample_loop(self, shape, return_intermediates: bool = False):
        device = self.betas.device
        img = torch.randn(shape, device=device)
        intermediates = [img]
        for i in tqdm(reversed(range(0, self.num_timesteps)), desc="Sampling t", total=self.num_timesteps):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            img = self.p_sample(img, t, clip_denoised=self.clip_denoised)
            if i % self.log_every_t == 0 or i == self.num_timesteps - 1:
                intermediates.append(img)
        return (img, intermediates) if return_intermediates else img

    @torch.no_grad()
    def sample(self, batch_size: int = 16, return_intermediates: bool = False):
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(shape, return_intermediates=return_intermediates)

    # -- training ---------------------------------------------------------------------------
    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        if self.loss_type == "l1":
            loss = (target - pred).abs()
            return loss.mean() if mean else loss
        if self.loss_type == "l2":
            return F.mse_loss(target, pred) if mean else F.mse_loss(target, pred, reduction="none")
        raise NotImplementedError(f"unknown loss type '{self.loss_type}'")

    def training_noise(self, x_start: torch.Tensor) -> torch.Tensor:
        """The noise a training step adds: standard normal, plus with ``noise_offset`` > 0 that much of
        one normal draw per sample and channel, constant over the image ("offset noise", Guttenberg 2023;
        kohya-ss ``--noise_offset``), which lets fine-tuning move an image's mean brightness. With the
        default 0 no extra number is drawn, so training is exactly what it is without the option."""
        noise = torch.randn_like(x_start)
        if self.noise_offset:
            b, c = x_start.shape[:2]
            offset = torch.randn(b, c, *([1] * (x_start.dim() - 2)), device=x_start.device, dtype=x_start.dtype)
            noise = noise + self.noise_offset * offset
        return noise

    def p_losses(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None):
        """Simple loss (Ho et al. 2020, eq. 14) weighted by ``l_simple_weight``, plus
        ``original_elbo_weight`` times the variational-bound-weighted loss."""
        noise = default(noise, lambda: self.training_noise(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_out = self.model(x_noisy, t)
        target = self._training_target(x_start, noise, t)
        loss = self.get_loss(model_out, target, mean=False).mean(dim=[1, 2, 3])
        prefix = "train" if self.training else "val"
        loss_vlb = (self.lvlb_weights[t] * loss).mean()
        total = loss.mean() * self.l_simple_weight + self.original_elbo_weight * loss_vlb
        loss_dict = {f"{prefix}/loss_simple": loss.mean(), f"{prefix}/loss_vlb": loss_vlb,
                     f"{prefix}/loss": total}
        return total, loss_dict

    def forward(self, x: torch.Tensor, *args, **kwargs):
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        return self.p_losses(x, t, *args, **kwargs)

    def get_input(self, batch: Mapping, k: str) -> torch.Tensor:
        """The batch's images (B, H, W[, C]) as a contiguous float (B, C, H, W) tensor."""
        x = batch[k]
        if len(x.shape) == 3:
            x = x[..., None]
        x = rearrange(x, "b h w c -> b c h w")
        return x.to(memory_format=torch.contiguous_format).float()

    def shared_step(self, batch: Mapping):
        x = self.get_input(batch, self.first_stage_key)
        return self(x)

    def apply_ucg_training(self, batch: Mapping) -> None:
        """Unconditional-guidance training: replace each item of ``batch[key]`` by the
        configured ``val`` ("" when None) with probability ``p`` (``ucg_training``), in place."""
        for key, setting in self.ucg_training.items():
            p = setting["p"]
            val = "" if setting["val"] is None else setting["val"]
            for i in range(len(batch[key])):
                if self.ucg_prng.choice(2, p=[1 - p, p]):
                    batch[key][i] = val

    def _batch_size(self, batch: Mapping) -> int:
        return len(batch[self.first_stage_key])

    def training_step(self, batch, batch_idx):
        self.apply_ucg_training(batch)
        loss, loss_dict = self.shared_step(batch)
        batch_size = self._batch_size(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True,
                 on_epoch=False, batch_size=batch_size)
        if self.use_scheduler:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False, batch_size=batch_size)
        return loss

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        """Validation losses with the training weights and, under ``_ema`` names, with the EMA weights."""
        batch_size = self._batch_size(batch)
        _, loss_dict_no_ema = self.shared_step(batch)
        loss_dict_ema = loss_dict_no_ema  # without EMA the "_ema" metrics (configs monitor them) are the same
        if self.use_ema:
            with self.ema_scope():
                _, loss_dict_ema = self.shared_step(batch)
        self.log_dict(loss_dict_no_ema, prog_bar=False, logger=True, on_step=False, on_epoch=True,
                      batch_size=batch_size)
        self.log_dict({key + "_ema": value for key, value in loss_dict_ema.items()}, prog_bar=False,
                      logger=True, on_step=False, on_epoch=True, batch_size=batch_size)

    def on_train_batch_end(self, *args, **kwargs):
        if self.use_ema:
            self.model_ema(self.ema_module())

    def ema_module(self) -> nn.Module:
        """What the EMA follows: the diffusion model, or only the LoRA layers when they are trained."""
        return self.model if self.lora_layers is None else self.lora_layers

    @contextmanager
    def ema_scope(self, context: Optional[str] = None):
        """Run the block with the EMA weights in ``self.model``; put the training weights back after."""
        if self.use_ema:
            self.model_ema.store(self.ema_module().parameters())
            self.model_ema.copy_to(self.ema_module())
            if context is not None:
                print(f"{context}: Switched to EMA weights")
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.ema_module().parameters())
                if context is not None:
                    print(f"{context}: Restored training weights")

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_skip_prefixes(self) -> Dict[str, str]:
        """Checkpoint key prefixes this model deliberately does not load, with the reason."""
        return {}

    @torch.no_grad()
    def init_from_ckpt(self, path: str, ignore_keys=list(), only_model: bool = False) -> None:
        """Load a ``.ckpt``/``.safetensors`` file (bare or ``state_dict``-wrapped), dropping keys
        that start with any of ``ignore_keys``; non-strict, reports what did not match."""
        sd, _ = load_checkpoint(path)
        sd = dict(sd)
        for key in list(sd):
            if any(key.startswith(prefix) for prefix in ignore_keys):
                print(f"Deleting key {key} from state_dict.")
                del sd[key]
        sd = self._fit_checkpoint_to_model(sd)
        target = self.model if only_model else self
        try:
            missing, unexpected = target.load_state_dict(sd, strict=False)
        except RuntimeError as err:
            raise CheckpointError(f"{path} has tensors of other shapes than the model (set make_it_fit "
                                  f"or ignore_keys): {str(err).splitlines()[-1].strip()}") from None
        print(f"Restored from {path} with {len(missing)} missing and {len(unexpected)} unexpected keys")
        if missing:
            print(f"Missing Keys:\n {missing}")
        if unexpected:
            print(f"\nUnexpected Keys:\n {unexpected}")

    def _fit_checkpoint_to_model(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """With ``make_it_fit``, grow checkpoint tensors to this model's larger shapes."""
        if not self.make_it_fit:
            return sd
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        for name, tensor in tqdm(own.items(), desc="Fitting old weights to new weights"):
            if name in sd and sd[name].shape != tensor.shape:
                sd[name] = fit_tensor_to_shape(sd[name], tensor.shape).to(tensor.dtype)
        return sd

    def _learning_rate(self) -> float:
        if not hasattr(self, "learning_rate"):
            raise AttributeError(f"{self.__class__.__name__}.learning_rate is not set; main.py sets it from "
                                 "model.base_learning_rate, set it yourself when training another way")
        return self.learning_rate

    def add_lora_layers(self, lora_config: Optional[Mapping]) -> None:
        """With ``lora_config`` (``rank``, ``alpha``, ``targets``, ``save_every``): freeze every weight
        of the model and add trainable LoRA layers (:class:`~ldm.modules.lora.training.TrainableLora`),
        the only parameters the optimizer and the EMA see (docs/LORA.md, "Training a LoRA")."""
        if not lora_config:
            return
        from ldm.modules.lora.training import TrainableLora

        options = dict(lora_config)
        unknown = sorted(set(options) - set(LORA_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"lora_config has unknown keys {unknown}; it takes {', '.join(LORA_CONFIG_KEYS)}")
        if self.learn_logvar:
            raise ValueError("lora_config trains only LoRA layers; it cannot be combined with learn_logvar")
        targets = list(options.get("targets", ["attn"]))
        if "text" in targets and not getattr(self, "cond_stage_trainable", False):
            raise ValueError("lora_config targets 'text' need cond_stage_trainable: true (only then is the "
                             "conditioning encoded with gradients; the encoder's own weights stay frozen)")
        self.requires_grad_(False)
        self.lora_layers = TrainableLora(self, rank=options.get("rank", 4), alpha=options.get("alpha"),
                                         targets=targets)
        self.lora_config = options
        if self.use_ema:
            self.model_ema = LitEma(self.lora_layers)
        print(f"{self.__class__.__name__}: training {len(self.lora_layers.pairs)} LoRA layers of rank "
              f"{self.lora_layers.rank} ({sum(p.numel() for p in self.lora_layers.parameters())} parameters); "
              "every other weight is frozen")

    def trainable_parameters(self) -> List[torch.Tensor]:
        """What the optimizer updates: the diffusion model (+ ``logvar`` when learned), or only the
        LoRA layers (``lora_config``)."""
        if self.lora_layers is not None:
            return list(self.lora_layers.parameters())
        params = list(self.model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """AdamW at ``self.learning_rate``; with ``scheduler_config`` also a per-step LambdaLR
        whose factor is ``instantiate_from_config(scheduler_config).schedule``."""
        opt = torch.optim.AdamW(self.trainable_parameters(), lr=self._learning_rate())
        if not self.use_scheduler:
            return opt
        if "target" not in self.scheduler_config:
            raise KeyError("scheduler_config needs a 'target' (e.g. ldm.lr_scheduler.LambdaLinearScheduler)")
        schedule = instantiate_from_config(self.scheduler_config)
        print("Setting up LambdaLR scheduler...")
        scheduler = {"scheduler": LambdaLR(opt, lr_lambda=schedule.schedule), "interval": "step", "frequency": 1}
        return [opt], [scheduler]


# ---------------------------------------------------------------------------------------------
# Latent diffusion
# ---------------------------------------------------------------------------------------------


LORA_CONFIG_KEYS = ("rank", "alpha", "targets", "save_every")
_LAZY_MODELS = {"LatentDiffusion": "latent_diffusion"}
_TASK_MODELS = ("LatentUpscaleDiffusion", "LatentFinetuneDiffusion", "LatentInpaintDiffusion",
                "LatentDepth2ImageDiffusion", "LatentUpscaleFinetuneDiffusion",
                "ImageEmbeddingConditionedLatentDiffusion")


def __getattr__(name: str):
    """Serve LatentDiffusion (``latent_diffusion``) and the task models (``latent_tasks``) under this
    module's name, where the original configs look for them, lazily, so that any of the modules can
    be imported first."""
    if name in _LAZY_MODELS:
        import importlib

        return getattr(importlib.import_module(f"ldm.models.diffusion.{_LAZY_MODELS[name]}"), name)
    if name in _TASK_MODELS:
        from ldm.models.diffusion import latent_tasks

        return getattr(latent_tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
