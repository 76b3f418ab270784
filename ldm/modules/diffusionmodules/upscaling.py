"""Low-resolution conditioning for the x4 upscaler: the low-resolution image is noised with its own
forward diffusion process ("noise augmentation", Ho et al. 2022, Cascaded Diffusion Models, sec. 4.1)
and the noise level is handed to the UNet as a class label."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.diffusionmodules.util import extract_into_tensor, forward_process_arrays, make_beta_schedule
from ldm.util import default


class AbstractLowScaleModel(nn.Module):
    """Holds a forward diffusion schedule (8 persistent float32 buffers) used to noise a
    conditioning signal; without ``noise_schedule_config`` it holds none."""

    def __init__(self, noise_schedule_config=None):
        super().__init__()
        if noise_schedule_config is not None:
            self.register_schedule(**noise_schedule_config)

    def register_schedule(self, beta_schedule: str = "linear", timesteps: int = 1000,
                          linear_start: float = 1e-4, linear_end: float = 2e-2,
                          cosine_s: float = 8e-3) -> None:
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start,
                                   linear_end=linear_end, cosine_s=cosine_s)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start = linear_start
        self.linear_end = linear_end
        for name, array in forward_process_arrays(betas).items():
            self.register_buffer(name, torch.tensor(array, dtype=torch.float32))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor,
                 noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho et al. 2020, eq. 4)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def forward(self, x: torch.Tensor):
        return x, None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SimpleImageConcat(AbstractLowScaleModel):
    """Passes the low-resolution image through unchanged, at constant noise level 0."""

    def __init__(self):
        super().__init__(noise_schedule_config=None)
        self.max_noise_level = 0

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros(x.shape[0], device=x.device).long()


class ImageConcatWithNoiseAugmentation(AbstractLowScaleModel):
    """Noises the low-resolution image to a level drawn uniformly from [0, max_noise_level)
    (or the given ``noise_level``) and returns ``(noised image, level)``.
    ``to_cuda`` is accepted for config compatibility; tensors follow the input's device."""

    def __init__(self, noise_schedule_config, max_noise_level: int = 1000, to_cuda: bool = False):
        super().__init__(noise_schedule_config=noise_schedule_config)
        self.max_noise_level = max_noise_level

    def forward(self, x: torch.Tensor, noise_level: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        if noise_level is None:
            noise_level = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device).long()
        elif not isinstance(noise_level, torch.Tensor):
            raise TypeError(f"noise_level must be a tensor of integer levels, got {type(noise_level).__name__}")
        return self.q_sample(x, noise_level), noise_level
