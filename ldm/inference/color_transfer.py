"""Recolouring an object in place, for editing by DDIM inversion (``scripts/edit.py --color-transfer``).

A plain inversion edit trades the new colour against the object's footprint: a small ``--keep``
lets the target prompt recolour but also redraws the object elsewhere, a large one keeps the
object and its old colour. Colour transfer splits the two:

1. the image regenerated from its inverted noise with the target prompt (``--keep 0``) shows the
   new colour, wherever it draws the object;
2. :func:`transfer_color` moves the source object's latent toward that colour, pixel by pixel, so
   the object keeps its place and extent;
3. that latent is inverted and regenerated at ``--keep``, with loss guidance (:func:`structure_loss`)
   toward the source image's object footprint, so the model cleans the latent up without moving the
   object.

The footprints are read from colour (:func:`object_coverage`): the method assumes a coloured object
on a less colourful background, as in the shapes world.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm.inference.guidance import opponent_chroma

CHROMA_MIN = 0.2  # the shapes world's backgrounds stay below 0.1, its objects above 0.34
FOREGROUND_SOFTNESS = 0.05  # chroma width of the structure loss's step from background to object
INTERIOR_MIN = 0.9  # latent pixels this much covered by the object give its colour
DEFAULT_STRUCTURE_SCALE = 10000.0  # the structure guidance of --color-transfer (benchmarks/edit_inversion.py)


def chroma_length(image: torch.Tensor) -> torch.Tensor:
    """Per-pixel chroma [B, H, W] of an image [B, 3, H, W] in [-1, 1]: the length of its opponent-plane
    colour vector (0 for grey, whatever the brightness)."""
    return opponent_chroma((image.float() + 1) / 2).norm(dim=1)


def object_coverage(image: torch.Tensor, latent_size: tuple, chroma_min: float = CHROMA_MIN) -> torch.Tensor:
    """Which share of each latent pixel [B, 1, h, w] the coloured object covers: the pixels of ``image``
    ([B, 3, H, W] in [-1, 1]) whose chroma exceeds ``chroma_min``, averaged over each latent pixel."""
    colored = (chroma_length(image) > chroma_min).float()[:, None]
    return F.adaptive_avg_pool2d(colored, latent_size)


def _masked_mean(latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean of ``latent`` over ``mask`` [B, 1, h, w] (0 where the mask is empty)."""
    return (latent * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp_min(1)


def _has_interior(coverage: torch.Tensor) -> torch.Tensor:
    """Per image [B]: whether any latent pixel is covered by the object at least ``INTERIOR_MIN``."""
    return (coverage >= INTERIOR_MIN).flatten(1).any(1)


def _background_and_color(latent: torch.Tensor, coverage: torch.Tensor) -> tuple:
    """The background's mean latent (coverage 0) and the object's colour vector (its mean deviation
    from that background over the object's interior, coverage >= ``INTERIOR_MIN``), [B, C, 1, 1] each."""
    background = _masked_mean(latent, (coverage == 0).float())
    return background, _masked_mean(latent - background, (coverage >= INTERIOR_MIN).float())


def _recolor(latent: torch.Tensor, coverage: torch.Tensor, color: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """``latent`` with every pixel its object touches moved by ``a(p) * (color - v)`` in the images
    where ``found`` [B] holds (see :func:`transfer_color`)."""
    background, source_color = _background_and_color(latent, coverage)
    share = ((latent - background) * source_color).sum(1, keepdim=True)
    share = share / source_color.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
    touched = (coverage > 0).float() * found.to(latent.dtype)[:, None, None, None]
    return latent + touched * share * (color - source_color)


def transfer_color(source: torch.Tensor, target: torch.Tensor, source_coverage: torch.Tensor,
                   target_coverage: torch.Tensor) -> torch.Tensor:
    """``source``'s latent with its object recoloured as ``target``'s object, in place.

    Each latent is read as background plus ``a(p) * v``: ``v`` the object's colour vector (the mean
    deviation from the background over the object's interior, coverage >= 0.9) and ``a(p)`` how much
    of it pixel ``p`` shows (the projection of its deviation on ``v``; about 1 inside, fractions at
    the edges). Every pixel the source object touches moves by ``a(p) * (v_target - v_source)``; the
    background is left as it is. Images with no object interior in either latent come back unchanged.
    """
    _, target_color = _background_and_color(target, target_coverage)
    found = _has_interior(source_coverage) & _has_interior(target_coverage)
    return _recolor(source, source_coverage, target_color, found)


def recolored_latent(latent: torch.Tensor, image: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """``latent`` with the object of ``image`` (its decoded pixels, [B, 3, H, W] in [-1, 1]) recoloured
    to the latent colour vector ``color`` [C], as :func:`transfer_color` does with a colour read from
    another latent. Images with no object interior come back unchanged."""
    coverage = object_coverage(image, tuple(latent.shape[-2:])).to(latent)
    return _recolor(latent, coverage, color.to(latent).view(1, -1, 1, 1), _has_interior(coverage))


def colored_share(image: torch.Tensor, softness: float = FOREGROUND_SOFTNESS) -> torch.Tensor:
    """How surely each pixel of ``image`` [B, 3, H, W] in [-1, 1] belongs to a coloured object, [B, H, W]
    in (0, 1): a sigmoid of its chroma around ``CHROMA_MIN`` (a differentiable ``object_coverage``)."""
    return torch.sigmoid((chroma_length(image) - CHROMA_MIN) / softness)


def structure_loss(source_image: torch.Tensor, scale: float):
    """The image loss that pins where the source's object is, whatever its colour: ``scale`` times the
    mean squared difference between an image's :func:`colored_share` map and ``source_image``'s, per
    image, summed over the batch. (The chroma itself would also pin how colourful the object is, and
    fight a change from yellow to green.)"""
    reference = colored_share(source_image)

    def loss(image: torch.Tensor) -> torch.Tensor:
        return scale * (colored_share(image) - reference.to(image.device)).pow(2).flatten(1).mean(1).sum()

    return loss
