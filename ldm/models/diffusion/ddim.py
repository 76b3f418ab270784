"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models"), with the
original's time grid, guidance, inpainting blend, img2img helpers and DDIM inversion."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.ddim_schedule import DDIMScheduleSampler
from ldm.models.diffusion.sampling_util import (Generator, norm_thresholding, randn,
                                                warn_on_batch_mismatch)
from ldm.modules.diffusionmodules.util import extract_into_tensor


class DDIMSampler(DDIMScheduleSampler):
    """``DDIMSampler(model, schedule="linear", device=None)``; ``sample`` returns
    ``(samples, {"x_inter": [...], "pred_x0": [...]})``."""

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Optional[Callable] = None, normals_sequence=None,
               img_callback: Optional[Callable] = None, quantize_x0: bool = False,
               eta: float = 0., mask: Optional[torch.Tensor] = None,
               x0: Optional[torch.Tensor] = None, temperature: float = 1.,
               noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
               verbose: bool = True, x_T: Optional[torch.Tensor] = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1., unconditional_conditioning: Any = None,
               dynamic_threshold: Optional[float] = None,
               ucg_schedule: Optional[Sequence[float]] = None, generator: Generator = None,
               **kwargs) -> Tuple[torch.Tensor, Dict[str, List[torch.Tensor]]]:
        """Draw ``batch_size`` samples of ``shape`` (C, H, W) in ``S`` DDIM steps.

        ``eta`` scales the noise (0: deterministic DDIM, 1: DDPM-like); ``mask``/``x0`` keep the
        region where mask is 1 equal to ``x0`` noised to each step; ``generator`` (one, or one
        per batch element) makes x_T and every noise draw reproducible.
        """
        warn_on_batch_mismatch(conditioning, batch_size)
        self.make_schedule(ddim_num_steps=S, ddim_eta=eta, verbose=verbose)
        C, H, W = shape
        size = (batch_size, C, H, W)
        if verbose:
            print(f"Data shape for DDIM sampling is {size}, eta {eta}")
        return self.ddim_sampling(
            conditioning, size, callback=callback, img_callback=img_callback,
            quantize_denoised=quantize_x0, mask=mask, x0=x0, ddim_use_original_steps=False,
            noise_dropout=noise_dropout, temperature=temperature, score_corrector=score_corrector,
            corrector_kwargs=corrector_kwargs, x_T=x_T, log_every_t=log_every_t,
            unconditional_guidance_scale=unconditional_guidance_scale,
            unconditional_conditioning=unconditional_conditioning,
            dynamic_threshold=dynamic_threshold, ucg_schedule=ucg_schedule, generator=generator,
            verbose=verbose)

    @torch.no_grad()
    def ddim_sampling(self, cond: Any, shape: Sequence[int], x_T: Optional[torch.Tensor] = None,
                      ddim_use_original_steps: bool = False, callback: Optional[Callable] = None,
                      timesteps: Optional[int] = None, quantize_denoised: bool = False,
                      mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
                      img_callback: Optional[Callable] = None, log_every_t: int = 100,
                      temperature: float = 1., noise_dropout: float = 0., score_corrector=None,
                      corrector_kwargs=None, unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      dynamic_threshold: Optional[float] = None,
                      ucg_schedule: Optional[Sequence[float]] = None,
                      generator: Generator = None, verbose: bool = True):
        """The DDIM loop from x_T down the grid; ``timesteps`` (an int) keeps only the first
        part of the grid, as the original does."""
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
        if ucg_schedule is not None and len(ucg_schedule) != len(time_range):
            raise ValueError(f"ucg_schedule has {len(ucg_schedule)} scales for "
                             f"{len(time_range)} steps")
        if verbose:
            print(f"Running DDIM Sampling with {total_steps} timesteps")

        intermediates = {"x_inter": [img], "pred_x0": [img]}
        iterator = tqdm(time_range, desc="DDIM Sampler", total=total_steps, disable=not verbose)
        for i, step in enumerate(iterator):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step), device=self.device, dtype=torch.long)
            if mask is not None:
                img = self.blend_known_region(img, x0, mask, ts, generator)
            if ucg_schedule is not None:
                unconditional_guidance_scale = ucg_schedule[i]
            img, pred_x0 = self.p_sample_ddim(
                img, cond, ts, index=index, use_original_steps=ddim_use_original_steps,
                quantize_denoised=quantize_denoised, temperature=temperature,
                noise_dropout=noise_dropout, score_corrector=score_corrector,
                corrector_kwargs=corrector_kwargs,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=unconditional_conditioning,
                dynamic_threshold=dynamic_threshold, generator=generator)
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates

    @torch.no_grad()
    def p_sample_ddim(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int,
                      repeat_noise: bool = False, use_original_steps: bool = False,
                      quantize_denoised: bool = False, temperature: float = 1.,
                      noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
                      unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      dynamic_threshold: Optional[float] = None,
                      generator: Generator = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update (Song et al. 2021, eq. 12):
        ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``.
        Returns ``(x_prev, pred_x0)``."""
        b = x.shape[0]
        model_output, e_t = self.model_output_and_eps(
            x, t, c, unconditional_guidance_scale, unconditional_conditioning, score_corrector,
            corrector_kwargs)
        a_t, a_prev, sigma_t, sqrt_one_minus_at = self.step_coefficients(
            index, use_original_steps, b, x.dtype)

        if self.model.parameterization == "v":
            pred_x0 = self.model.predict_start_from_z_and_v(x, t, model_output)
        else:
            pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        if quantize_denoised:
            pred_x0, _, *_ = self.model.first_stage_model.quantize(pred_x0)
        if dynamic_threshold is not None:
            pred_x0 = norm_thresholding(pred_x0, dynamic_threshold)

        dir_xt = (1. - a_prev - sigma_t ** 2).sqrt() * e_t
        noise = self.draw_noise(x.shape, generator, a_t.dtype, repeat=repeat_noise)
        noise = sigma_t * noise * temperature
        if noise_dropout > 0.:
            noise = torch.nn.functional.dropout(noise, p=noise_dropout)
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt + noise
        return x_prev, pred_x0

    # -- img2img and inversion --------------------------------------------------------------
    @torch.no_grad()
    def stochastic_encode(self, x0: torch.Tensor, t: torch.Tensor,
                          use_original_steps: bool = False, noise: Optional[torch.Tensor] = None,
                          generator: Generator = None) -> torch.Tensor:
        """Noise ``x0`` to DDIM step ``t`` — an index into the DDIM grid, as img2img's
        ``t_enc = int(strength * steps)`` is (the original's convention)."""
        self._require_schedule()
        if use_original_steps:
            sqrt_alphas = self.sqrt_alphas_cumprod
            sqrt_one_minus_alphas = self.sqrt_one_minus_alphas_cumprod
        else:
            sqrt_alphas = torch.sqrt(self.ddim_alphas)
            sqrt_one_minus_alphas = self.ddim_sqrt_one_minus_alphas
        if noise is None:
            noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        t = t.to(self.device)
        return (extract_into_tensor(sqrt_alphas, t, x0.shape).to(x0) * x0
                + extract_into_tensor(sqrt_one_minus_alphas, t, x0.shape).to(x0) * noise)

    @torch.no_grad()
    def decode(self, x_latent: torch.Tensor, cond: Any, t_start: int,
               unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
               use_original_steps: bool = False, callback: Optional[Callable] = None,
               verbose: bool = True, generator: Generator = None) -> torch.Tensor:
        """Run the first ``t_start`` DDIM steps backwards from ``x_latent`` (img2img's denoise,
        and the inverse of ``encode``). ``generator`` (one, or one per image) drives the noise of
        eta > 0 schedules."""
        self._require_schedule()
        timesteps = (np.arange(self.ddpm_num_timesteps) if use_original_steps
                     else self.ddim_timesteps)
        timesteps = timesteps[:t_start]
        time_range = np.flip(timesteps)
        total_steps = timesteps.shape[0]
        if verbose:
            print(f"Running DDIM Sampling with {total_steps} timesteps")
        x_dec = x_latent
        iterator = tqdm(time_range, desc="Decoding image", total=total_steps, disable=not verbose)
        for i, step in enumerate(iterator):
            index = total_steps - i - 1
            ts = torch.full((x_latent.shape[0],), int(step), device=self.device, dtype=torch.long)
            x_dec, _ = self.p_sample_ddim(
                x_dec, cond, ts, index=index, use_original_steps=use_original_steps,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=unconditional_conditioning, generator=generator)
            if callback:
                callback(i)
        return x_dec

    @torch.no_grad()
    def encode(self, x0: torch.Tensor, c: Any, t_enc: int, use_original_steps: bool = False,
               return_intermediates: Optional[int] = None,
               unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
               callback: Optional[Callable] = None, verbose: bool = True):
        """Deterministic DDIM inversion: run the eta=0 ODE step forwards ``t_enc`` grid steps.

        Returns ``(x_encoded, {"x_encoded", "intermediate_steps"[, "intermediates"]})``.
        Unlike the SAI original (which feeds the loop index ``i`` as the timestep), the model
        sees the grid's timestep, so ``decode(encode(x0, c, k), c, k)`` returns ``x0`` up to the
        discretisation error; v models are converted to eps as in sampling.
        """
        self._require_schedule()
        timesteps = (np.arange(self.ddpm_num_timesteps) if use_original_steps
                     else self.ddim_timesteps)
        if t_enc > timesteps.shape[0]:
            raise ValueError(f"t_enc={t_enc} exceeds the {timesteps.shape[0]} steps of the grid")
        if use_original_steps:
            alphas_next = self.alphas_cumprod[:t_enc]
            alphas = self.alphas_cumprod_prev[:t_enc]
        else:
            alphas_next = self.ddim_alphas[:t_enc]
            alphas = self.ddim_alphas_prev[:t_enc]
        x_next = x0
        intermediates, inter_steps = [], []
        for i in tqdm(range(t_enc), desc="Encoding Image", disable=not verbose):
            t = torch.full((x0.shape[0],), int(timesteps[i]), device=self.device, dtype=torch.long)
            _, noise_pred = self.model_output_and_eps(
                x_next, t, c, unconditional_guidance_scale, unconditional_conditioning)
            a_next, a_prev = alphas_next[i].to(x0), alphas[i].to(x0)
            xt_weighted = (a_next / a_prev).sqrt() * x_next
            weighted_noise_pred = a_next.sqrt() * (
                (1 / a_next - 1).sqrt() - (1 / a_prev - 1).sqrt()) * noise_pred
            x_next = xt_weighted + weighted_noise_pred
            if return_intermediates and (
                    (i % (t_enc // return_intermediates) == 0 and i < t_enc - 1)
                    or i >= t_enc - 2):
                intermediates.append(x_next)
                inter_steps.append(i)
            if callback:
                callback(i)
        out = {"x_encoded": x_next, "intermediate_steps": inter_steps}
        if return_intermediates:
            out["intermediates"] = intermediates
        return x_next, out
