"""Sampling the shapes models for evaluation: text-to-image, inpainting, depth-to-image and x4
upscaling, each with classifier-free guidance and a seeded generator per image (image k gets the
same starting noise whatever batch it is drawn in)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ldm.models.diffusion.samplers import get_sampler
from ldm.models.diffusion.sampling_util import randn


def generators(seed: int, count: int, start: int = 0) -> List[torch.Generator]:
    """One CPU generator per image, seeded ``seed + start + k``."""
    return [torch.Generator().manual_seed(seed + start + k) for k in range(count)]


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def to_model_images(images: np.ndarray, device) -> torch.Tensor:
    """(B, H, W, 3) uint8 or float in [0, 1] -> (B, 3, H, W) float in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.asarray(images)).float()
    if np.asarray(images).dtype == np.uint8:
        x = x / 255.0
    return (2.0 * x - 1.0).permute(0, 3, 1, 2).to(device)


def _text_pair(model, prompts: Sequence[str]):
    c = model.get_learned_conditioning(list(prompts))
    uc = model.get_learned_conditioning([""] * len(prompts))
    return c, uc


@torch.no_grad()
def sample_latents(model, cond, uncond, batch: int, latent_hw, seed: int, start: int = 0,
                   steps: int = 20, scale: float = 5.0, sampler: str = "dpm") -> torch.Tensor:
    """Latents drawn with ``sampler`` in ``steps`` steps at guidance ``scale``."""
    shape = (model.channels, *latent_hw)
    x_t = randn((batch, *shape), generators(seed, batch, start), device=model.device)
    samples, _ = get_sampler(sampler, model).sample(
        S=steps, batch_size=batch, shape=shape, conditioning=cond, verbose=False, x_T=x_t,
        unconditional_guidance_scale=scale, unconditional_conditioning=uncond)
    return samples


def _in_batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield start, min(count, start + batch_size)


@torch.no_grad()
def txt2img(model, prompts: Sequence[str], seed: int = 0, steps: int = 20, scale: float = 5.0,
            batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """(N, H, W, 3) uint8 images for ``prompts``."""
    out = []
    for a, b in _in_batches(len(prompts), batch_size):
        c, uc = _text_pair(model, prompts[a:b])
        z = sample_latents(model, c, uc, b - a, (model.image_size, model.image_size), seed, a, steps, scale, sampler)
        out.append(to_uint8_images(model.decode_first_stage(z)))
    return np.concatenate(out)


def _images_with_concat(model, c_concat: torch.Tensor, prompts: Sequence[str], latent_hw, seed: int, start: int,
                        steps: int, scale: float, sampler: str, extra: Optional[Dict] = None) -> np.ndarray:
    """Images of a task model whose conditioning is ``c_concat`` (shared by the guided and the
    unguided branch, as in the originals) plus the prompts' text, and ``extra`` entries."""
    c, uc = _text_pair(model, prompts)
    cond = {"c_concat": [c_concat], "c_crossattn": [c], **(extra or {})}
    uncond = {"c_concat": [c_concat], "c_crossattn": [uc], **(extra or {})}
    z = sample_latents(model, cond, uncond, len(prompts), latent_hw, seed, start, steps, scale, sampler)
    return to_uint8_images(model.decode_first_stage(z))


@torch.no_grad()
def inpaint(model, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], seed: int = 0,
            steps: int = 20, scale: float = 5.0, batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """Repaint ``masks`` (N, H, W), 1 = repaint, of ``images`` (N, H, W, 3) following ``prompts``."""
    out = []
    for a, b in _in_batches(len(prompts), batch_size):
        x = to_model_images(images[a:b], model.device)
        mask = torch.from_numpy(np.asarray(masks[a:b], dtype=np.float32))[..., None].to(model.device)
        batch = {"mask": mask, "masked_image": (x * (1.0 - mask.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)}
        latent_hw = (x.shape[2] // 4, x.shape[3] // 4)
        torch.manual_seed(seed + a)   # the masked image's latent is a sample of the autoencoder's posterior
        c_cat = model.concat_conditioning(batch, latent_hw)
        out.append(_images_with_concat(model, c_cat, prompts[a:b], latent_hw, seed, a, steps, scale, sampler))
    return np.concatenate(out)


@torch.no_grad()
def depth2img(model, depths: np.ndarray, prompts: Sequence[str], seed: int = 0, steps: int = 20,
              scale: float = 5.0, batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """Images following depth maps ``depths`` (N, H, W) and ``prompts``, from pure noise."""
    out = []
    for a, b in _in_batches(len(prompts), batch_size):
        depth = torch.from_numpy(np.asarray(depths[a:b], dtype=np.float32))
        latent_hw = (depth.shape[1] // 4, depth.shape[2] // 4)
        c_cat = model.depth_to_concat(depth, latent_hw)
        out.append(_images_with_concat(model, c_cat, prompts[a:b], latent_hw, seed, a, steps, scale, sampler))
    return np.concatenate(out)


@torch.no_grad()
def upscale(model, low_res: np.ndarray, prompts: Sequence[str], noise_level: int = 20, seed: int = 0,
            steps: int = 20, scale: float = 5.0, batch_size: int = 16, sampler: str = "dpm") -> np.ndarray:
    """x4 upscaling of ``low_res`` (N, h, w, 3) following ``prompts``, the low-resolution input
    noised to ``noise_level`` as the x4 upscaler expects."""
    out = []
    for a, b in _in_batches(len(prompts), batch_size):
        x_low = to_model_images(low_res[a:b], model.device)
        levels = torch.full((b - a,), noise_level, dtype=torch.long, device=model.device)
        torch.manual_seed(seed + a)
        zx, levels = model.low_scale_model(x_low, noise_level=levels)
        out.append(_images_with_concat(model, zx, prompts[a:b], x_low.shape[2:], seed, a, steps, scale, sampler,
                                       {"c_adm": levels}))
    return np.concatenate(out)


@torch.no_grad()
def reconstruct(autoencoder, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Autoencoder reconstructions (posterior mode) of ``images`` (N, H, W, 3)."""
    out = []
    device = next(autoencoder.parameters()).device
    for a, b in _in_batches(len(images), batch_size):
        x = to_model_images(images[a:b], device)
        out.append(to_uint8_images(autoencoder.decode(autoencoder.encode(x).mode())))
    return np.concatenate(out)


def sampling_settings(steps: int, scale: float, sampler: str, seed: int, extra: Optional[Dict] = None) -> Dict:
    """The settings printed with every table."""
    return {"sampler": sampler, "steps": steps, "guidance": scale, "seed": seed, **(extra or {})}
