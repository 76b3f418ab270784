"""Colour guidance in the latent space (``--guide-color-space latent``).

The image-space colour losses pull through the decoder, whose gradient at high noise barely turns an
object's hue: a pull strong enough to recolour it also redraws it elsewhere (README, "Keeping the
shape"). This loss acts on the predicted x0 latent itself, along the first stage's own colour
direction, so no decoder is differentiated:

- the guide colour's latent vector ``v_guide``: a square of that colour on mid-grey, encoded by the
  model's first stage (the mode of a KL posterior, so the same run gives the same images), its
  interior's mean minus the background's (computed once per run);
- each latent pixel of the predicted x0 is read as background (the per-channel median) plus
  ``a(p) v``, ``v`` the object's current colour vector (the mean deviation of the 15% most deviant
  pixels) and ``a(p)`` how much of it the pixel shows (the projection on ``v``, clipped to [0, 1.2]);
- the loss is ``scale`` times the mean over pixels of ``w(p) |x0(p) - (background + a(p) v_guide)|^2``,
  with ``a``, the background and the weights held fixed: the pull changes the colour each pixel
  shows, not how much of it is object. ``w(p) = a(p)`` for ``--guide-region object``, 1 for ``image``.

Read from a blurry early x0, that pull also damages the image (README, "Keeping the shape"). With
``--guide-keep-layout`` the target is instead a finished image: each image is first sampled without
guidance from the same noise, its object is recoloured in that latent (:func:`layout_target`, the
rank-1 transfer of ``edit.py --color-transfer``), and the guided pass pulls every pixel of the
predicted x0 toward it (:func:`layout_loss`), so the object keeps the place and shape the model gave it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ldm.inference.color_transfer import recolored_latent

SWATCH_SIZE = 128  # pixels: a swatch of the guide colour, its middle half coloured
OBJECT_SHARE = 0.15  # the most deviant share of latent pixels that gives the object's current colour
SHARE_MAX = 1.2  # a(p) is clipped to [0, SHARE_MAX]


@torch.no_grad()
def guide_color_latent(model: torch.nn.Module, rgb: Sequence[float]) -> torch.Tensor:
    """The latent vector [C] of the colour ``rgb`` (each in [0, 1]) against mid-grey: a swatch encoded
    by ``model``'s first stage (the pixels themselves for a pixel-space model), inside minus outside."""
    swatch = torch.zeros(1, 3, SWATCH_SIZE, SWATCH_SIZE)
    quarter = SWATCH_SIZE // 4
    swatch[:, :, quarter:-quarter, quarter:-quarter] = (torch.tensor(list(rgb)) * 2 - 1).view(3, 1, 1)
    parameter = next(model.parameters())
    swatch = swatch.to(parameter.device)
    if hasattr(model, "encode_first_stage"):
        encoded = model.encode_first_stage(swatch)
        encoded = encoded.mode() if hasattr(encoded, "mode") else encoded  # a KL posterior: its mean, not a draw
        latent = model.get_first_stage_encoding(encoded).float()
    else:
        latent = swatch
    size = latent.shape[-1]
    inner, outer = size // 4 + size // 16, size // 4 - size // 16  # a margin away from the square's edge
    inside = latent[0, :, inner:size - inner, inner:size - inner].flatten(1).mean(1)
    ring = torch.ones(size, size, dtype=torch.bool, device=latent.device)
    ring[outer:size - outer, outer:size - outer] = False
    return inside - latent[0][:, ring].mean(1)


def read_object(latent: torch.Tensor) -> tuple:
    """``(background [B, C, 1, 1], a [B, 1, H, W])`` of latents [B, C, H, W], as the module docstring says."""
    background = latent.flatten(2).median(2).values[..., None, None]
    deviation = latent - background
    length = deviation.norm(dim=1)
    threshold = torch.quantile(length.flatten(1), 1 - OBJECT_SHARE, dim=1)[:, None, None]
    top = (length >= threshold)[:, None].to(latent.dtype)
    color = (deviation * top).sum((2, 3), keepdim=True) / top.sum((2, 3), keepdim=True)
    share = (deviation * color).sum(1, keepdim=True) / color.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
    return background, share.clamp(0, SHARE_MAX)


def scaled_distance(latent: torch.Tensor, wanted: torch.Tensor, weight, scale: float) -> torch.Tensor:
    """``scale`` times the weighted squared distance of ``latent`` to ``wanted``, its mean over each
    image's pixels and channels, summed over the batch (so an image's gradient does not depend on the
    batch): the form of both latent losses."""
    return scale * (weight * (latent.float() - wanted).pow(2)).flatten(1).mean(1).sum()


def latent_color_loss(target: torch.Tensor, scale: float, region: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss on predicted x0 latents [B, C, H, W] toward the colour vector ``target`` [C] (see the
    module docstring), per image (mean over pixels and channels), summed over the batch."""
    def loss(latent: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            background, share = read_object(latent.float())
            wanted = background + share * target.to(latent.device).view(1, -1, 1, 1)
            weight = share if region == "object" else torch.ones_like(share)
        return scaled_distance(latent, wanted, weight, scale)

    return loss


@torch.no_grad()
def layout_target(model: torch.nn.Module, reference: torch.Tensor, rgb: Sequence[float]) -> torch.Tensor:
    """``reference`` (latents [B, C, H, W] sampled without guidance) with the object of each image
    recoloured to ``rgb`` (each in [0, 1]): the object's footprint is read on the decoded image
    (``color_transfer.object_coverage``), and every latent pixel it touches moves by
    ``a(p) (v_guide - v)``, ``v`` the object's colour vector there and ``v_guide`` the guide colour's
    (:func:`guide_color_latent`). An image without a coloured object comes back unchanged."""
    reference = reference.float()
    decode = getattr(model, "decode_first_stage", None)
    image = decode(reference).float() if decode is not None else reference
    return recolored_latent(reference, image, guide_color_latent(model, rgb).to(reference.device))


def layout_loss(target: torch.Tensor, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss of ``--guide-keep-layout`` on predicted x0 latents: ``scale`` times the mean squared
    difference to ``target`` (:func:`layout_target`), per image, summed over the batch."""
    def loss(latent: torch.Tensor) -> torch.Tensor:
        return scaled_distance(latent, target.to(latent.device), 1.0, scale)

    return loss
