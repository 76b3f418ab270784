"""Tiny Karlo files for tests: the prior of ``tests.tiny_configs.TINY_KARLO_PRIOR`` and a 32-wide
CLIP text tower (OpenAI layout, one 32-wide head, full vocabulary so that real prompts tokenize),
with random weights moved off their initial values, written as a user would have them."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from omegaconf import OmegaConf

from ldm.modules.encoders.openclip import CLIPArch
from ldm.modules.karlo.kakao.models.clip import CustomizedCLIP, CustomizedTokenizer
from ldm.modules.karlo.kakao.models.prior_model import PriorDiffusionModel
from ldm.util import save_checkpoint
from tests.tiny_configs import tiny_karlo_prior_config

TINY_CLIP_DIM = 32
# 32-wide text tower with one head: what OpenAI's rule (heads = width / 64, at least 1) reads back
TINY_CLIP = CLIPArch(embed_dim=TINY_CLIP_DIM, text_width=TINY_CLIP_DIM, text_heads=1, text_layers=2,
                     vision_width=0, vision_layers=0, vision_heads=1, patch_size=1, quick_gelu=True,
                     openai_layout=True)


def perturbed(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """``module`` with every parameter moved by seeded noise (LayerNorms are no longer identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return module.eval()


def tiny_prior(clip_mean: torch.Tensor = None, clip_std: torch.Tensor = None) -> PriorDiffusionModel:
    mean = torch.zeros(TINY_CLIP_DIM) if clip_mean is None else clip_mean
    std = torch.ones(TINY_CLIP_DIM) if clip_std is None else clip_std
    return perturbed(PriorDiffusionModel(tiny_karlo_prior_config(), CustomizedTokenizer(), mean, std), seed=1)


def tiny_clip() -> CustomizedCLIP:
    return perturbed(CustomizedCLIP(TINY_CLIP, with_visual=False), seed=2)


def write_tiny_karlo_files(folder: Path) -> Dict[str, str]:
    """The four files :func:`ldm.modules.karlo.load_prior` takes, for the tiny models."""
    generator = torch.Generator().manual_seed(3)
    clip_mean = torch.randn(TINY_CLIP_DIM, generator=generator)
    clip_std = torch.rand(TINY_CLIP_DIM, generator=generator) + 0.5
    paths = {"config": folder / "prior_tiny.yaml", "ckpt": folder / "prior-tiny.ckpt",
             "clip": folder / "clip-tiny.safetensors", "clip_stats": folder / "ViT-tiny_stats.th"}
    OmegaConf.save(tiny_karlo_prior_config(), paths["config"])
    save_checkpoint(tiny_prior().state_dict(), str(paths["ckpt"]))
    save_checkpoint(tiny_clip().state_dict(), str(paths["clip"]))
    torch.save((clip_mean, clip_std), paths["clip_stats"])
    return {key: str(path) for key, path in paths.items()}
