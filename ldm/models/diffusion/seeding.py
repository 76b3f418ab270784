"""Per-image seeds: image ``i`` of a run is made from seed ``--seed + i`` alone, so that any one
image can be regenerated with ``--seed <its seed> --n_samples 1`` whatever batch it was part of.

Every random draw for an image (start noise, the VAE posterior sample, the noise of img2img's
forward diffusion, the upscaler's noise augmentation) comes from that image's own CPU generator,
in a fixed order, and so do the samplers' own draws (eta > 0, ancestral samplers), which take
the same generators. CPU generators also make the noise the same on CUDA, MPS and CPU.
"""
from __future__ import annotations

from typing import List, Sequence

import torch


def image_seeds(base_seed: int, first_index: int, count: int) -> List[int]:
    """Seeds of images ``first_index .. first_index + count - 1`` of a run."""
    return [base_seed + first_index + offset for offset in range(count)]


class ImageNoise:
    """One CPU generator per image; ``randn(shape)`` draws ``shape`` for every image and stacks
    the draws into a batch. An image's n-th draw depends only on its seed."""

    def __init__(self, seeds: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32):
        self.seeds = list(seeds)
        self.device = device
        self.dtype = dtype
        self._generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in self.seeds]

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """A ``[len(seeds), *shape]`` standard normal batch on ``self.device``."""
        draws = [torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
                 for generator in self._generators]
        return torch.stack(draws).to(device=self.device, dtype=self.dtype)

    @property
    def generators(self) -> List[torch.Generator]:
        """The per-image generators, for samplers that draw noise while sampling (they accept one
        generator per batch element), so that those draws follow the image's seed too."""
        return self._generators
