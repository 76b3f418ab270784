"""PLMS sampling (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"):
DDIM's update driven by a linear-multistep (Adams-Bashforth) combination of noise predictions,
started with one pseudo improved-Euler step, on the DDIM time grid."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.ddim_schedule import DDIMScheduleSampler
from ldm.models.diffusion.sampling_util import (Generator, norm_thresholding, randn,
                                                warn_on_batch_mismatch)


def adams_bashforth_eps(e_t: torch.Tensor, old_eps: List[torch.Tensor]) -> torch.Tensor:
    """Linear-multistep noise estimate from the current and up to three previous predictions
    (Adams-Bashforth orders 2-4; Liu et al. 2022, eq. 12)."""
    if len(old_eps) == 1:
        return (3 * e_t - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


class PLMSSampler(DDIMScheduleSampler):
    """``PLMSSampler(model, schedule="linear", device=None)``; eta must be 0."""

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform",
                      ddim_eta: float = 0., verbose: bool = True) -> None:
        if ddim_eta != 0:
            raise ValueError("ddim_eta must be 0 for PLMS")
        super().make_schedule(ddim_num_steps, ddim_discretize, ddim_eta, verbose)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Optional[Callable] = None, normals_sequence=None,
               img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0., mask: Optional[torch.Tensor] = None,
               x0: Optional[torch.Tensor] = None, temperature: float = 1.,
               noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
               verbose: bool = True, x_T: Optional[torch.Tensor] = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1., unconditional_conditioning: Any = None,
               dynamic_threshold: Optional[float] = None, generator: Generator = None,
               **kwargs) -> Tuple[torch.Tensor, Dict[str, List[torch.Tensor]]]:
        """Draw ``batch_size`` samples of ``shape`` (C, H, W) in ``S`` PLMS steps (S + 1 model
        evaluations). Returns ``(samples, {"x_inter": [...], "pred_x0": [...]})``."""
        warn_on_batch_mismatch(conditioning, batch_size)
        self.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=verbose)
        C, H, W = shape
        size = (batch_size, C, H, W)
        if verbose:
            print(f"Data shape for PLMS sampling is {size}")
        return self.plms_sampling(
            conditioning, size, callback=callback, img_callback=img_callback,
            quantize_denoised=quantize_x0, mask=mask, x0=x0, ddim_use_original_steps=False,
            noise_dropout=noise_dropout, temperature=temperature, score_corrector=score_corrector,
            corrector_kwargs=corrector_kwargs, x_T=x_T, log_every_t=log_every_t,
            unconditional_guidance_scale=unconditional_guidance_scale,
            unconditional_conditioning=unconditional_conditioning,
            dynamic_threshold=dynamic_threshold, generator=generator, verbose=verbose)

    @torch.no_grad()
    def plms_sampling(self, cond: Any, shape: Sequence[int], x_T: Optional[torch.Tensor] = None,
                      ddim_use_original_steps: bool = False, callback: Optional[Callable] = None,
                      timesteps: Optional[int] = None, quantize_denoised: bool = False,
                      mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
                      img_callback: Optional[Callable] = None, log_every_t: int = 100,
                      temperature: float = 1., noise_dropout: float = 0., score_corrector=None,
                      corrector_kwargs=None, unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      dynamic_threshold: Optional[float] = None, generator: Generator = None,
                      verbose: bool = True):
        """The PLMS loop; keeps the last three noise predictions for the multistep update."""
        self._require_schedule()
        b = shape[0]
        img = randn(shape, generator, device=self.device) if x_T is None else x_T
        if timesteps is None:
            timesteps = self.ddpm_num_timesteps if ddim_use_original_steps else self.ddim_timesteps
        elif not ddim_use_original_steps:
            n = self.ddim_timesteps.shape[0]
            subset_end = int(min(timesteps / n, 1) * n) - 1
            timesteps = self.ddim_timesteps[:subset_end]
        time_range = (list(reversed(range(0, timesteps))) if ddim_use_original_steps
                      else np.flip(timesteps))
        total_steps = timesteps if ddim_use_original_steps else timesteps.shape[0]
        if verbose:
            print(f"Running PLMS Sampling with {total_steps} timesteps")

        intermediates = {"x_inter": [img], "pred_x0": [img]}
        old_eps: List[torch.Tensor] = []
        iterator = tqdm(time_range, desc="PLMS Sampler", total=total_steps, disable=not verbose)
        for i, step in enumerate(iterator):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step), device=self.device, dtype=torch.long)
            next_step = time_range[min(i + 1, len(time_range) - 1)]
            ts_next = torch.full((b,), int(next_step), device=self.device, dtype=torch.long)
            if mask is not None:
                img = self.blend_known_region(img, x0, mask, ts, generator)
            img, pred_x0, e_t = self.p_sample_plms(
                img, cond, ts, index=index, use_original_steps=ddim_use_original_steps,
                quantize_denoised=quantize_denoised, temperature=temperature,
                noise_dropout=noise_dropout, score_corrector=score_corrector,
                corrector_kwargs=corrector_kwargs,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=unconditional_conditioning, old_eps=old_eps,
                t_next=ts_next, dynamic_threshold=dynamic_threshold, generator=generator)
            old_eps.append(e_t)
            if len(old_eps) >= 4:
                old_eps.pop(0)
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates

    @torch.no_grad()
    def p_sample_plms(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int,
                      repeat_noise: bool = False, use_original_steps: bool = False,
                      quantize_denoised: bool = False, temperature: float = 1.,
                      noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
                      unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      old_eps: Optional[List[torch.Tensor]] = None,
                      t_next: Optional[torch.Tensor] = None,
                      dynamic_threshold: Optional[float] = None, generator: Generator = None):
        """One PLMS step; returns ``(x_prev, pred_x0, e_t)``. The first step (no history) is a
        pseudo improved-Euler step costing two model evaluations (Liu et al. 2022, eq. 11)."""
        old_eps = old_eps or []
        b = x.shape[0]
        a_t, a_prev, sigma_t, sqrt_one_minus_at = self.step_coefficients(
            index, use_original_steps, b, x.dtype)

        def eps_at(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            return self.model_output_and_eps(
                x_in, t_in, c, unconditional_guidance_scale, unconditional_conditioning,
                score_corrector, corrector_kwargs)[1]

        def ddim_step(e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            pred_x0 = (x - sqrt_one_minus_at * e) / a_t.sqrt()
            if quantize_denoised:
                pred_x0, _, *_ = self.model.first_stage_model.quantize(pred_x0)
            if dynamic_threshold is not None:
                pred_x0 = norm_thresholding(pred_x0, dynamic_threshold)
            dir_xt = (1. - a_prev - sigma_t ** 2).sqrt() * e
            noise = sigma_t * self.draw_noise(x.shape, generator, a_t.dtype,
                                              repeat=repeat_noise) * temperature
            if noise_dropout > 0.:
                noise = torch.nn.functional.dropout(noise, p=noise_dropout)
            return a_prev.sqrt() * pred_x0 + dir_xt + noise, pred_x0

        e_t = eps_at(x, t)
        if len(old_eps) == 0:
            x_prev, _ = ddim_step(e_t)
            e_t_prime = (e_t + eps_at(x_prev, t_next)) / 2
        else:
            e_t_prime = adams_bashforth_eps(e_t, old_eps)
        x_prev, pred_x0 = ddim_step(e_t_prime)
        return x_prev, pred_x0, e_t
