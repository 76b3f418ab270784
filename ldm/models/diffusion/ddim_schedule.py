"""What DDIM and PLMS share: the DDIM time grid and its coefficients (``make_schedule``), the
per-step scalars, the guided model call that returns eps for eps and v models, and inpainting's
known-region blend. Both samplers keep the original attribute names (``ddim_timesteps``,
``ddim_alphas``, ``ddim_alphas_prev``, ``ddim_sigmas``, ...)."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch

from ldm.models.diffusion.sampling_util import Generator, guided_model_output, randn
from ldm.modules.diffusionmodules.util import make_ddim_sampling_parameters, make_ddim_timesteps


class DDIMScheduleSampler:
    """Base of ``DDIMSampler`` and ``PLMSSampler``; the device comes from the model unless given."""

    def __init__(self, model, schedule: str = "linear", device=None, **kwargs):
        self.model = model
        self.ddpm_num_timesteps = model.num_timesteps
        self.schedule = schedule
        self.device = torch.device(device) if device is not None else model.device

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store ``attr`` as an attribute, on the sampler's device when it is a tensor."""
        if isinstance(attr, torch.Tensor) and attr.device != self.device:
            attr = attr.to(self.device)
        setattr(self, name, attr)

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
                             corrector_kwargs: Optional[dict] = None):
        """The guided model output and the noise prediction it implies (v models convert with
        ``predict_eps_from_z_and_v``, x0 models with eq. 4 of Ho et al. 2020), optionally
        modified by ``score_corrector``."""
        model_output = guided_model_output(self.model.apply_model, x, t, c,
                                           unconditional_conditioning, unconditional_guidance_scale)
        if self.model.parameterization == "v":
            e_t = self.model.predict_eps_from_z_and_v(x, t, model_output)
        elif self.model.parameterization == "eps":
            e_t = model_output
        elif self.model.parameterization == "x0":
            a_t = self.alphas_cumprod.to(x)[t].reshape(-1, *((1,) * (x.ndim - 1)))
            e_t = (x - a_t.sqrt() * model_output) / (1. - a_t).sqrt()
        else:
            raise ValueError(f"unknown parameterization '{self.model.parameterization}'")
        if score_corrector is not None:
            if self.model.parameterization != "eps":
                raise ValueError("score_corrector is implemented for eps models only")
            e_t = score_corrector.modify_score(self.model, e_t, x, t, c, **(corrector_kwargs or {}))
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

    def draw_noise(self, shape, generator: Generator, dtype: torch.dtype,
                   repeat: bool = False) -> torch.Tensor:
        """Noise for one update, drawn even when sigma is 0 (as the original does, so the global
        random stream matches it step for step); ``repeat`` shares one draw across the batch."""
        if not repeat:
            return randn(shape, generator, device=self.device, dtype=dtype)
        if isinstance(generator, (list, tuple)):
            generator = generator[0]
        one = randn((1, *shape[1:]), generator, device=self.device, dtype=dtype)
        return one.repeat(shape[0], *((1,) * (len(shape) - 1)))
