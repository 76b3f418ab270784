"""unCLIP's noise augmentation of CLIP image embeddings (Ramesh et al. 2022, "Hierarchical
Text-Conditional Image Generation with CLIP Latents", sec. 2; SD 2.1 unCLIP): the embedding is
standardised with the CLIP embedding statistics, noised to a level with the forward process
q(x_t | x_0), un-standardised, and returned with a sinusoidal embedding of the level."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from ldm.modules.diffusionmodules.openaimodel import Timestep
from ldm.modules.diffusionmodules.upscaling import ImageConcatWithNoiseAugmentation
from ldm.util import CheckpointError, in_cwd_or_repository, load_tensors


def read_clip_stats(path: str, dim: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` float32 of CLIP image embeddings from a statistics file such as Karlo's
    ``ViT-L-14_stats.th`` (each ``[dim]`` when ``dim`` is given; std positive), read with the
    checkpoint loader's checks (a hostile file named by a config cannot run code)."""
    stats = load_tensors(path)
    width = f"{dim}-d " if dim is not None else ""
    if not (isinstance(stats, (tuple, list)) and len(stats) == 2
            and all(isinstance(t, torch.Tensor) and t.dim() == 1 and (dim is None or t.shape[0] == dim)
                    for t in stats)):
        raise CheckpointError(f"{path} does not hold the (mean, std) pair of {width}CLIP embedding statistics")
    mean, std = (t.float() for t in stats)
    if not bool((std > 0).all()):
        raise CheckpointError(f"{path}: the standard deviations of the CLIP embedding statistics are not all positive")
    return mean, std


class CLIPEmbeddingNoiseAugmentation(ImageConcatWithNoiseAugmentation):
    """``clip_stats_path``: a file holding ``(mean, std)`` of the CLIP embeddings (unCLIP-L's
    ``ViT-L-14_stats.th``; a relative path is looked up in the current folder, then in the
    repository); without it, mean 0 and std 1. The statistics are non-persistent
    buffers (not in checkpoints). A configured file that is missing does not stop the model from
    being built or loaded, but using the augmentor then raises with the path to fetch."""

    def __init__(self, *args, clip_stats_path: Optional[str] = None, timestep_dim: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.missing_stats_path = None
        if clip_stats_path is not None and os.path.isfile(in_cwd_or_repository(clip_stats_path)):
            clip_mean, clip_std = read_clip_stats(in_cwd_or_repository(clip_stats_path))
        else:
            self.missing_stats_path = clip_stats_path
            clip_mean, clip_std = torch.zeros(timestep_dim), torch.ones(timestep_dim)
        self.register_buffer("data_mean", clip_mean[None, :], persistent=False)
        self.register_buffer("data_std", clip_std[None, :], persistent=False)
        self.time_embed = Timestep(timestep_dim)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise to zero mean and unit variance with the CLIP statistics."""
        return (x - self.data_mean) * 1.0 / self.data_std

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        """Back to the CLIP embeddings' statistics."""
        return x * self.data_std + self.data_mean

    def forward(self, x: torch.Tensor, noise_level: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(noised embedding, embedding of the level)``; ``noise`` (ours) is the standard normal draw
        of ``q_sample`` (by default ``randn_like``), so that a caller can take it from its own seeds."""
        if self.missing_stats_path is not None:
            raise FileNotFoundError(f"clip_stats_path {self.missing_stats_path!r} does not exist: the CLIP embedding "
                                    "statistics (mean, std) are needed to noise-augment image embeddings "
                                    "(unCLIP-L: ViT-L-14_stats.th from the Karlo release)")
        if noise_level is None:
            noise_level = torch.randint(0, self.max_noise_level, (x.shape[0],), device=x.device).long()
        elif not isinstance(noise_level, torch.Tensor):
            raise TypeError(f"noise_level must be a tensor of integer levels, got {type(noise_level).__name__}")
        z = self.unscale(self.q_sample(self.scale(x), noise_level, noise=noise))
        return z, self.time_embed(noise_level)
