"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models"), with the
original's time grid, guidance, inpainting blend, img2img helpers and DDIM inversion."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.ddim_schedule import DDIMScheduleSampler
from ldm.models.diffusion.sampling_util import (
    BASIC_OPTIONS,
    CondFn,
    Generator,
    SamplerCapabilities,
    check_finite,
    randn,
)
from ldm.modules.diffusionmodules.util import extract_into_tensor

DDIM_CAPABILITIES = SamplerCapabilities(
    "ddim", BASIC_OPTIONS | {"eta", "mask", "img_callback", "score_corrector", "quantize_x0",
                             "temperature", "noise_dropout", "dynamic_threshold", "ucg_schedule"},
    partial_denoising=True,
    needs=(("temperature", "eta", "it scales the noise that eta adds"),
           ("noise_dropout", "eta", "it drops out parts of the noise that eta adds")))


class DDIMSampler(DDIMScheduleSampler):
    """``DDIMSampler(model, schedule="linear", device=None)``; ``sample`` returns
    ``(samples, {"x_inter": [...], "pred_x0": [...]})``. ``eta`` scales the noise (0:
    deterministic DDIM, 1: DDPM-like); ``mask``/``x0`` keep the region where mask is 1 equal to
    ``x0`` noised to each step."""

    capabilities = DDIM_CAPABILITIES
    loop_method = "ddim_sampling"
    ddim_sampling = DDIMScheduleSampler.grid_sampling

    def grid_step(self, x, c, t, t_next, index, history, **kwargs):
        return self.p_sample_ddim(x, c, t, index, **kwargs)

    @torch.no_grad()
    def p_sample_ddim(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int,
                      repeat_noise: bool = False, use_original_steps: bool = False,
                      quantize_denoised: bool = False, temperature: float = 1.,
                      noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
                      unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      dynamic_threshold: Optional[float] = None,
                      generator: Generator = None,
                      cond_fn: Optional[CondFn] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update (``ddim_update``) from the guided model output at ``t``; v models
        predict x0 with their own conversion. Returns ``(x_prev, pred_x0)``."""
        model_output, e_t = self.model_output_and_eps(
            x, t, c, unconditional_guidance_scale, unconditional_conditioning, score_corrector,
            corrector_kwargs, cond_fn)
        coefficients = self.step_coefficients(index, use_original_steps, x.shape[0], x.dtype)
        pred_x0 = (self.model.predict_start_from_z_and_v(x, t, model_output)
                   if self.model.parameterization == "v" else None)
        return self.ddim_update(x, e_t, coefficients, pred_x0, quantize_denoised, temperature,
                                noise_dropout, dynamic_threshold, generator, repeat_noise)

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
               verbose: bool = True, generator: Generator = None,
               cond_fn: Optional[CondFn] = None) -> torch.Tensor:
        """Run the first ``t_start`` DDIM steps backwards from ``x_latent`` (img2img's denoise,
        and the inverse of ``encode``). ``generator`` (one, or one per image) drives the noise of
        eta > 0 schedules; ``cond_fn`` is the loss guidance, as in ``sample``. NaN/inf latents
        raise ``NonFiniteSampleError``."""
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
                unconditional_conditioning=unconditional_conditioning, generator=generator,
                cond_fn=cond_fn)
            check_finite(x_dec, i + 1, total_steps, self.label)
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
