"""Synthetic latents for the tests of the colour edits and guidance: a background vector plus, at each
pixel, a share of an object's colour vector (how ldm.inference.color_transfer and
ldm.inference.latent_color_guidance read a latent)."""
import torch


def latent_with_object(background: torch.Tensor, color: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """[1, C, h, w]: ``background`` [C] plus ``share`` (h, w) times ``color`` [C] at each pixel."""
    return (background[:, None, None] + share[None] * color[:, None, None])[None]
