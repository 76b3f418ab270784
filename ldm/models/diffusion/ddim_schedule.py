"""What DDIM and PLMS share: the DDIM time grid and its coefficients (``make_schedule``), the
sampling loop over that grid (time range, guidance schedule, inpainting blend, callbacks,
intermediates), the guided model call that returns eps for eps, v and x0 models, and the DDIM
update (Song et al. 2021, eq. 12) that both take their steps with. Both samplers keep the
original attribute names (``ddim_timesteps``, ``ddim_alphas``, ``ddim_alphas_prev``,
``ddim_sigmas``, ...)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling_util import (
    CondFn,
    Generator,
    LossGuidance,
    Sampler,
    append_dims,
    check_finite,
    guided_model_output,
    norm_thresholding,
    randn,
    shift_output,
)
from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps


class DDIMScheduleSampler(Sampler):
    """Base of ``DDIMSampler`` and ``PLMSSampler``; the device comes from the model unless given.
    Subclasses name their loop method (``loop_method``) and take one step in ``grid_step``."""

    label = "DDIM"  # for messages and the progress bar
    loop_method = "grid_sampling"

    def __init__(self, model, schedule: str = "linear", device=None, **kwargs):
        super().__init__(model, device)
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform",
                      ddim_eta: float = 0., verbose: bool = True) -> None:
        """The DDIM grid and coefficients (Song et al. 2021, eq. 12 and 16) as the original
        computes them: float32 copies of the model's schedule, sigmas from ``ddim_eta``."""
        self.ddim_timesteps = make_ddim_timesteps(
            ddim_discr_method=ddim_discretize, num_ddim_timesteps=ddim_num_steps,
            num_ddpm_timesteps=self.ddpm_num_timesteps, verbose=verbose)
        alphas_cumprod = self.model.alphas_cumprod.detach().to(torch.float32).cpu()
        if alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError("the model's alphas_cumprod must have one value per timestep")
        alphas_cumprod_prev = self.model.alphas_cumprod_prev.detach().to(torch.float32).cpu()
        self.register_buffer("betas", self.model.betas.detach().to(torch.float32))
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.register_buffer("alphas_cumprod_prev", alphas_cumprod_prev)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1. - alphas_cumprod).sqrt())
        self.register_buffer("log_one_minus_alphas_cumprod", (1. - alphas_cumprod).log())
        self.register_buffer("sqrt_recip_alphas_cumprod", (1. / alphas_cumprod).sqrt())
        self.register_buffer("sqrt_recipm1_alphas_cumprod", (1. / alphas_cumprod - 1).sqrt())

        sigmas, alphas, alphas_prev = make_ddim_sampling_parameters(
            alphacums=alphas_cumprod.numpy(), ddim_timesteps=self.ddim_timesteps, eta=ddim_eta,
            verbose=verbose)
        ddim_alphas = torch.as_tensor(np.asarray(alphas), dtype=torch.float32)
        self.register_buffer("ddim_sigmas", torch.as_tensor(sigmas, dtype=torch.float32))
        self.register_buffer("ddim_alphas", ddim_alphas)
        self.register_buffer("ddim_alphas_prev", torch.as_tensor(alphas_prev, dtype=torch.float32))
        self.register_buffer("ddim_sqrt_one_minus_alphas", (1. - ddim_alphas).sqrt())
        sigmas_for_original_steps = ddim_eta * torch.sqrt(
            (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
            * (1 - alphas_cumprod / alphas_cumprod_prev))
        self.register_buffer("ddim_sigmas_for_original_num_steps", sigmas_for_original_steps)

    def _require_schedule(self) -> None:
        if not hasattr(self, "ddim_timesteps"):
            raise RuntimeError("call make_schedule(ddim_num_steps, ...) (or sample) first")

    def _sample(self, S: int, size: Tuple[int, ...], request: SimpleNamespace):
        self.make_schedule(ddim_num_steps=S, ddim_eta=request.eta, verbose=request.verbose)
        if request.verbose:
            print(f"Data shape for {self.label} sampling is {size}, eta {request.eta}")
        return getattr(self, self.loop_method)(
            request.conditioning, size, callback=request.callback,
            img_callback=request.img_callback, quantize_denoised=request.quantize_x0,
            mask=request.mask, x0=request.x0, ddim_use_original_steps=False,
            noise_dropout=request.noise_dropout, temperature=request.temperature,
            score_corrector=request.score_corrector, corrector_kwargs=request.corrector_kwargs,
            x_T=request.x_T, log_every_t=request.log_every_t,
            unconditional_guidance_scale=request.unconditional_guidance_scale,
            unconditional_conditioning=request.unconditional_conditioning,
            dynamic_threshold=request.dynamic_threshold, ucg_schedule=request.ucg_schedule,
            generator=request.generator, verbose=request.verbose, cond_fn=request.cond_fn)

    def time_range(self, timesteps: Optional[int] = None,
                   use_original_steps: bool = False) -> Sequence[int]:
        """The timesteps to visit, first (noisiest) to last: the DDIM grid, or every one of the
        model's with ``use_original_steps``; ``timesteps`` (an int) keeps only the first part
        of the grid, as the original does."""
        if use_original_steps:
            return list(reversed(range(0, self.ddpm_num_timesteps if timesteps is None
                                       else timesteps)))
        grid = self.ddim_timesteps
        if timesteps is not None:
            n = grid.shape[0]
            grid = grid[:int(min(timesteps / n, 1) * n) - 1]
        return np.flip(grid)

    @torch.no_grad()
    def grid_sampling(self, cond: Any, shape: Sequence[int], x_T: Optional[torch.Tensor] = None,
                      ddim_use_original_steps: bool = False, callback: Optional[Callable] = None,
                      timesteps: Optional[int] = None, quantize_denoised: bool = False,
                      mask: Optional[torch.Tensor] = None, x0: Optional[torch.Tensor] = None,
                      img_callback: Optional[Callable] = None, log_every_t: int = 100,
                      temperature: float = 1., noise_dropout: float = 0., score_corrector=None,
                      corrector_kwargs=None, unconditional_guidance_scale: float = 1.,
                      unconditional_conditioning: Any = None,
                      dynamic_threshold: Optional[float] = None,
                      ucg_schedule: Optional[Sequence[float]] = None,
                      generator: Generator = None, verbose: bool = True,
                      cond_fn: Optional[CondFn] = None):
        """The loop from x_T down the grid (``time_range``), one ``grid_step`` per timestep;
        ``ucg_schedule`` gives the guidance scale of each step, ``cond_fn`` loss guidance. A step that leaves NaN/inf in
        the latents raises ``NonFiniteSampleError``. Returns ``(samples,
        {"x_inter": [...], "pred_x0": [...]})``, logged every ``log_every_t`` steps."""
        self._require_schedule()
        b = shape[0]
        img = randn(shape, generator, device=self.device) if x_T is None else x_T
        time_range = self.time_range(timesteps, ddim_use_original_steps)
        total_steps = len(time_range)
        if ucg_schedule is not None and len(ucg_schedule) != total_steps:
            raise ValueError(f"ucg_schedule has {len(ucg_schedule)} scales for "
                             f"{total_steps} steps")
        if verbose:
            print(f"Running {self.label} Sampling with {total_steps} timesteps")

        intermediates = {"x_inter": [img], "pred_x0": [img]}
        history: List[torch.Tensor] = []
        iterator = tqdm(time_range, desc=f"{self.label} Sampler", total=total_steps,
                        disable=not verbose)
        for i, step in enumerate(iterator):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step), device=self.device, dtype=torch.long)
            next_step = time_range[min(i + 1, total_steps - 1)]
            ts_next = torch.full((b,), int(next_step), device=self.device, dtype=torch.long)
            if mask is not None:
                img = self.blend_known_region(img, x0, mask, ts, generator)
            if ucg_schedule is not None:
                unconditional_guidance_scale = ucg_schedule[i]
            img, pred_x0 = self.grid_step(
                img, cond, ts, ts_next, index, history, use_original_steps=ddim_use_original_steps,
                quantize_denoised=quantize_denoised, temperature=temperature,
                noise_dropout=noise_dropout, score_corrector=score_corrector,
                corrector_kwargs=corrector_kwargs,
                unconditional_guidance_scale=unconditional_guidance_scale,
                unconditional_conditioning=unconditional_conditioning,
                dynamic_threshold=dynamic_threshold, generator=generator, cond_fn=cond_fn)
            check_finite(img, i + 1, total_steps, self.label)
            if callback:
                callback(i)
            if img_callback:
                img_callback(pred_x0, i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(img)
                intermediates["pred_x0"].append(pred_x0)
        return img, intermediates

    def grid_step(self, x: torch.Tensor, c: Any, t: torch.Tensor, t_next: torch.Tensor,
                  index: int, history: List[torch.Tensor],
                  **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of ``grid_sampling`` from timestep ``t`` (grid ``index``) towards
        ``t_next``; ``history`` is the loop's memory (PLMS keeps its noise predictions there).
        Returns ``(x_prev, pred_x0)``."""
        raise NotImplementedError

    def step_coefficients(self, index: int, use_original_steps: bool, batch_size: int,
                          dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
        """``(a_t, a_prev, sigma_t, sqrt(1 - a_t))`` of step ``index``, each shaped
        (B, 1, 1, 1) in float32 (float64 when the latents are float64)."""
        if use_original_steps:
            arrays = (self.alphas_cumprod, self.alphas_cumprod_prev,
                      self.ddim_sigmas_for_original_num_steps, self.sqrt_one_minus_alphas_cumprod)
        else:
            arrays = (self.ddim_alphas, self.ddim_alphas_prev, self.ddim_sigmas,
                      self.ddim_sqrt_one_minus_alphas)
        dtype = torch.promote_types(dtype, torch.float32)
        return tuple(a[index].to(device=self.device, dtype=dtype).expand(batch_size, 1, 1, 1)
                     for a in arrays)

    def model_output_and_eps(self, x: torch.Tensor, t: torch.Tensor, c: Any,
                             unconditional_guidance_scale: float = 1.,
                             unconditional_conditioning: Any = None, score_corrector=None,
                             corrector_kwargs: Optional[dict] = None,
                             cond_fn: Optional[CondFn] = None):
        """The guided model output (with ``cond_fn``'s loss guidance) and the noise prediction
        it implies (v models convert with ``predict_eps_from_z_and_v``, x0 models with eq. 4 of
        Ho et al. 2020), optionally modified by ``score_corrector``: its change of eps moves
        the output of any parameterization as loss guidance does (``shift_output``)."""
        model_output = guided_model_output(self.model.apply_model, x, t, c,
                                           unconditional_conditioning, unconditional_guidance_scale,
                                           LossGuidance.for_model(cond_fn, self.model))
        if self.model.parameterization == "v":
            e_t = self.model.predict_eps_from_z_and_v(x, t, model_output)
        elif self.model.parameterization == "eps":
            e_t = model_output
        elif self.model.parameterization == "x0":
            a_t = append_dims(self.alphas_cumprod.to(x)[t], x.ndim)
            e_t = (x - a_t.sqrt() * model_output) / (1. - a_t).sqrt()
        else:
            raise ValueError(f"unknown parameterization '{self.model.parameterization}'")
        if score_corrector is not None:
            corrected = score_corrector.modify_score(self.model, e_t, x, t, c,
                                                     **(corrector_kwargs or {}))
            a_t = append_dims(self.alphas_cumprod.to(x)[t], x.ndim)
            model_output = shift_output(self.model.parameterization, model_output,
                                        (e_t - corrected) / (1 - a_t).sqrt(), a_t)
            e_t = corrected
        return model_output, e_t

    def blend_known_region(self, img: torch.Tensor, x0: Optional[torch.Tensor],
                           mask: torch.Tensor, ts: torch.Tensor,
                           generator: Generator = None) -> torch.Tensor:
        """Inpainting with any model: where ``mask`` is 1 take ``x0`` noised to step ``ts``
        (``q_sample``), elsewhere keep the sample."""
        if x0 is None:
            raise ValueError("mask needs x0, the latent whose masked region is kept")
        shape = x0.shape
        if isinstance(generator, (list, tuple)):  # one draw per image, even for a shared x0
            shape = torch.broadcast_shapes(x0.shape, img.shape)
        noise = randn(shape, generator, device=x0.device, dtype=x0.dtype)
        img_orig = self.model.q_sample(x0, ts, noise)
        return img_orig * mask + (1. - mask) * img

    def ddim_update(self, x: torch.Tensor, e_t: torch.Tensor,
                    coefficients: Tuple[torch.Tensor, ...], pred_x0: Optional[torch.Tensor] = None,
                    quantize_denoised: bool = False, temperature: float = 1.,
                    noise_dropout: float = 0., dynamic_threshold: Optional[float] = None,
                    generator: Generator = None,
                    repeat_noise: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """The DDIM update (Song et al. 2021, eq. 12) with noise prediction ``e_t`` and the
        ``step_coefficients`` ``(a_t, a_prev, sigma_t, sqrt(1 - a_t))``:
        ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``, x0 predicted
        from eps (eq. 9) unless given, optionally quantized and norm-thresholded, z scaled by
        ``temperature`` and dropped out with ``noise_dropout``. Returns ``(x_prev, pred_x0)``."""
        a_t, a_prev, sigma_t, sqrt_one_minus_at = coefficients
        if pred_x0 is None:
            pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        if quantize_denoised:
            pred_x0, _, *_ = self.model.first_stage_model.quantize(pred_x0)
        if dynamic_threshold is not None:
            pred_x0 = norm_thresholding(pred_x0, dynamic_threshold)
        dir_xt = (1. - a_prev - sigma_t ** 2).sqrt() * e_t
        # Drawn even when sigma is 0, as the original does, so the global random stream matches it step for step.
        noise = sigma_t * randn(x.shape, generator, self.device, a_t.dtype, repeat=repeat_noise) * temperature
        if noise_dropout > 0.:
            noise = torch.nn.functional.dropout(noise, p=noise_dropout)
        return a_prev.sqrt() * pred_x0 + dir_xt + noise, pred_x0
