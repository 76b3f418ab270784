"""Ancestral sampling of LatentDiffusion (Ho et al. 2020, Algorithm 2, with conditioning), and
the DDIM shortcut used for logging. Mixed into LatentDiffusion."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldm.models.diffusion.samplers import get_sampler
from ldm.models.diffusion.seeding import ImageNoise
from ldm.modules.diffusionmodules.util import noise_like
from ldm.util import default


def _truncate_conditioning(cond, batch_size: int):
    """The first ``batch_size`` entries of a conditioning tensor, list or dict of those."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {key: ([c[:batch_size] for c in value] if isinstance(value, list) else value[:batch_size])
                for key, value in cond.items()}
    if isinstance(cond, list):
        return [c[:batch_size] for c in cond]
    return cond[:batch_size]


class LatentAncestralSampling:
    """p(x_{t-1} | x_t, c) and the loops that chain it, for eps-, x0- and v-prediction models."""

    def p_mean_variance(self, x, c, t, clip_denoised: bool, return_codebook_ids=False,
                        quantize_denoised=False, return_x0=False, score_corrector=None, corrector_kwargs=None):
        """Mean and variance of p(x_{t-1} | x_t, c). Unlike the original, v-prediction models
        are supported here too (x_0 from z and v)."""
        if return_codebook_ids:
            raise NotImplementedError("return_codebook_ids is no longer supported (as in the original)")
        model_out = self.apply_model(x, t, c)
        if score_corrector is not None:
            if self.parameterization != "eps":
                raise ValueError("score_corrector works with eps-prediction models only")
            model_out = score_corrector.modify_score(self, model_out, x, t, c, **(corrector_kwargs or {}))
        x_recon = self._start_from_model_output(x, t, model_out)
        if clip_denoised:
            x_recon.clamp_(-1.0, 1.0)
        if quantize_denoised:
            x_recon, _, _ = self.first_stage_model.quantize(x_recon)
        model_mean, posterior_variance, posterior_log_variance = self.q_posterior(x_start=x_recon, x_t=x, t=t)
        if return_x0:
            return model_mean, posterior_variance, posterior_log_variance, x_recon
        return model_mean, posterior_variance, posterior_log_variance

    @torch.no_grad()
    def p_sample(self, x, c, t, clip_denoised=False, repeat_noise=False, return_codebook_ids=False,
                 quantize_denoised=False, return_x0=False, temperature=1., noise_dropout=0.,
                 score_corrector=None, corrector_kwargs=None):
        """One ancestral step x_t -> x_{t-1} given ``c``; noise scaled by ``temperature``, none at t = 0."""
        outputs = self.p_mean_variance(x=x, c=c, t=t, clip_denoised=clip_denoised,
                                       return_codebook_ids=return_codebook_ids,
                                       quantize_denoised=quantize_denoised, return_x0=return_x0,
                                       score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)
        model_mean, _, model_log_variance = outputs[:3]
        noise = noise_like(x.shape, x.device, repeat_noise) * temperature
        if noise_dropout > 0.0:
            noise = F.dropout(noise, p=noise_dropout)
        nonzero_mask = (1 - (t == 0).float()).reshape(x.shape[0], *((1,) * (x.dim() - 1)))
        x_prev = model_mean + nonzero_mask * (0.5 * model_log_variance).exp() * noise
        return (x_prev, outputs[3]) if return_x0 else x_prev

    def _noised_cond(self, cond, ts: torch.Tensor):
        """The conditioning noised to its short schedule (``num_timesteps_cond`` > 1)."""
        if not self.shorten_cond_schedule:
            return cond
        if self.model.conditioning_key == "hybrid":
            raise ValueError("num_timesteps_cond > 1 does not work with hybrid conditioning")
        tc = self.cond_ids[ts.cpu()].to(cond.device)
        return self.q_sample(x_start=cond, t=tc, noise=torch.randn_like(cond))

    def _reverse_loop(self, cond, img: torch.Tensor, timesteps: int, step, desc: str, verbose: bool,
                      mask: Optional[torch.Tensor], x0: Optional[torch.Tensor], log_every_t: int,
                      callback: Optional[Callable], img_callback: Optional[Callable]) -> Tuple[torch.Tensor, list]:
        """The reverse-time loop of the ancestral samplers, from step ``timesteps - 1`` down to 0:
        ``step(img, cond, ts, i)`` gives the next image and what to record (None: the image
        itself); where ``mask`` is 1 the image is replaced by ``x0`` noised to the step. What is
        recorded every ``log_every_t`` steps (and at the first) is returned with the result."""
        intermediates = []
        steps = reversed(range(0, timesteps))
        for i in tqdm(steps, desc=desc, total=timesteps) if verbose else steps:
            ts = torch.full((img.shape[0],), i, device=self.device, dtype=torch.long)
            cond = self._noised_cond(cond, ts)
            img, record = step(img, cond, ts, i)
            if mask is not None:
                img = self.q_sample(x0, ts) * mask + (1.0 - mask) * img
            if i % log_every_t == 0 or i == timesteps - 1:
                intermediates.append(img if record is None else record)
            if callback:
                callback(i)
            if img_callback:
                img_callback(img, i)
        return img, intermediates

    @torch.no_grad()
    def progressive_denoising(self, cond, shape, verbose=True, callback=None, quantize_denoised=False,
                              img_callback=None, mask=None, x0=None, temperature=1., noise_dropout=0.,
                              score_corrector=None, corrector_kwargs=None, batch_size=None, x_T=None,
                              start_T=None, log_every_t=None):
        """Ancestral sampling that records the predicted x_0 every ``log_every_t`` steps."""
        log_every_t = log_every_t or self.log_every_t
        timesteps = self.num_timesteps
        if batch_size is not None:
            shape = [batch_size] + list(shape)
        else:
            batch_size = shape[0]
        if mask is not None and x0 is None:
            raise ValueError("a mask needs x0, the latent to keep where the mask is 1")
        img = torch.randn(shape, device=self.device) if x_T is None else x_T
        cond = _truncate_conditioning(cond, batch_size)
        if start_T is not None:
            timesteps = min(timesteps, start_T)
        if isinstance(temperature, float):
            temperature = [temperature] * timesteps

        def step(img, cond, ts, i):
            return self.p_sample(img, cond, ts, clip_denoised=self.clip_denoised,
                                 quantize_denoised=quantize_denoised, return_x0=True,
                                 temperature=temperature[i], noise_dropout=noise_dropout,
                                 score_corrector=score_corrector, corrector_kwargs=corrector_kwargs)

        return self._reverse_loop(cond, img, timesteps, step, "Progressive Generation", verbose, mask, x0,
                                  log_every_t, callback, img_callback)

    @torch.no_grad()
    def p_sample_loop(self, cond, shape, return_intermediates=False, x_T=None, verbose=True,
                      callback=None, timesteps=None, quantize_denoised=False, mask=None, x0=None,
                      img_callback=None, start_T=None, log_every_t=None):
        """Ancestral sampling (Ho et al. 2020, Algorithm 2) from ``x_T`` (default: fresh noise);
        where ``mask`` is 1 the result is replaced by ``x0`` noised to the current step."""
        log_every_t = log_every_t or self.log_every_t
        img = torch.randn(shape, device=self.betas.device) if x_T is None else x_T
        timesteps = default(timesteps, self.num_timesteps)
        if start_T is not None:
            timesteps = min(timesteps, start_T)
        if mask is not None and (x0 is None or x0.shape[2:3] != mask.shape[2:3]):
            raise ValueError("a mask needs x0 of the same spatial size")

        def step(img, cond, ts, i):
            return self.p_sample(img, cond, ts, clip_denoised=self.clip_denoised,
                                 quantize_denoised=quantize_denoised), None

        start = img
        img, intermediates = self._reverse_loop(cond, img, timesteps, step, "Sampling t", verbose, mask, x0,
                                                log_every_t, callback, img_callback)
        return (img, [start] + intermediates) if return_intermediates else img

    @torch.no_grad()
    def sample(self, cond, batch_size=16, return_intermediates=False, x_T=None, verbose=True,
               timesteps=None, quantize_denoised=False, mask=None, x0=None, shape=None, **kwargs):
        """Ancestral samples of latents, shape (batch_size, channels, image_size, image_size) by default."""
        if shape is None:
            shape = (batch_size, self.channels, self.image_size, self.image_size)
        cond = _truncate_conditioning(cond, batch_size)
        return self.p_sample_loop(cond, shape, return_intermediates=return_intermediates, x_T=x_T,
                                  verbose=verbose, timesteps=timesteps, quantize_denoised=quantize_denoised,
                                  mask=mask, x0=x0)

    @torch.no_grad()
    def sample_log(self, cond, batch_size: int, ddim: bool, ddim_steps: int, **kwargs):
        """Samples for ``log_images``: DDIM with ``ddim_steps`` steps (the registry's ``"ddim"``
        sampler) when ``ddim``, else ancestral sampling.

        Image ``i`` starts from the noise of seed ``i`` (:class:`~ldm.models.diffusion.seeding.ImageNoise`,
        the scripts' seeding), and DDIM's own noise (eta > 0) follows the same per-image
        generators: the seeds are fixed, 0 .. batch_size-1, so that the grids logged in the course
        of training start from the same noise and show how the model changes, not the noise.
        (The ancestral sampler draws its step noise from torch's global generator.)"""
        shape = (self.channels, self.image_size, self.image_size)
        noise = ImageNoise(range(batch_size), self.device)
        x_T = noise.randn(shape)
        if ddim:
            sampler = get_sampler("ddim", self)
            return sampler.sample(ddim_steps, batch_size, shape, cond, verbose=False, x_T=x_T,
                                  generator=noise.generators, **kwargs)
        return self.sample(cond=cond, batch_size=batch_size, return_intermediates=True, x_T=x_T, **kwargs)
