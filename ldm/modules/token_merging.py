"""Token Merging for Stable Diffusion (Bolya & Hoffman 2023, "Token Merging for Fast Stable
Diffusion", sec. 3-4), on ToMe's bipartite soft matching (Bolya et al. 2023, "Token Merging: Your
ViT But Faster", sec. 3).

Before the self-attention (``attn1``) of each transformer block at the UNet's highest resolutions
(token grid downsampled at most ``max_downsample`` times from the latent), the token grid is split
into ``sx x sy`` windows with one destination token each (a random one per window and call, or the
top-left one); every other token is a source. Each source's best destination is the one of highest
cosine similarity of the block's input features; the ``r = int(N * ratio)`` sources most similar
to theirs are averaged into it (a plain mean, as the paper does for Stable Diffusion), attention
runs on the ``N - r`` tokens left, and its output is unmerged: a merged source takes its
destination's output. Cross-attention and the MLP see all tokens. Training-free; ratio 0 is the
plain UNet.

It works in the model call path (:func:`token_merging` around sampling), so every sampler gets it.
The random destinations come from a CPU generator of their own, seeded on entering
:func:`token_merging` (the pipeline enters it for each batch, with the same seed: the draws do not
depend on the images' seeds), so the same options give the same image, an image is the same alone
or in a batch, and the global random state (the noise) is not touched. Guidance runs both halves
in one batch, so they share the destinations.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.attention import BasicTransformerBlock

# The paper's setting: only the blocks at the latent's own resolution, 2x2 windows, random destinations.
DEFAULT_MAX_DOWNSAMPLE = 1
DEFAULT_STRIDE = (2, 2)
# The seed of the destinations' generator at the start of each sampling run (images do not depend on
# their batch: the draws are the same for every seed and every position in a batch).
DEFAULT_SEED = 0


def check_ratio(ratio: float) -> float:
    """The fraction of tokens merged: a number in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"token merging ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def destination_tokens(height: int, width: int, stride: Tuple[int, int] = DEFAULT_STRIDE,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A boolean mask over the ``height * width`` tokens of a grid (row-major): True at one token of
    each whole ``sx x sy`` window, a random one drawn from ``generator`` (on the CPU), or the
    top-left one when ``generator`` is None. Rows and columns past the last whole window hold no
    destination."""
    sx, sy = stride
    rows, columns = height // sy, width // sx
    if generator is None:
        choice = torch.zeros(rows, columns, dtype=torch.long)
    else:
        choice = torch.randint(sx * sy, (rows, columns), generator=generator)
    windows = torch.zeros(rows, columns, sy * sx, dtype=torch.bool)
    windows.scatter_(-1, choice.unsqueeze(-1), True)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:rows * sy, :columns * sx] = windows.view(rows, columns, sy, sx).transpose(1, 2).reshape(rows * sy,
                                                                                                  columns * sx)
    return mask.flatten()


def _along_tokens(index: torch.Tensor, channels: int) -> torch.Tensor:
    """``index`` (b, k) expanded over ``channels`` for gather/scatter along the token axis."""
    return index.unsqueeze(-1).expand(*index.shape, channels)


class TokenMerge:
    """One bipartite matching of a batch of token sequences: :meth:`merge` takes (b, N, c) tokens
    to (b, N - r, c), :meth:`unmerge` brings (b, N - r, c) back to (b, N, c)."""

    def __init__(self, metric: torch.Tensor, destinations: torch.Tensor, r: int):
        with torch.no_grad():
            self.tokens = metric.shape[1]
            device = metric.device
            self.dst = destinations.nonzero().squeeze(-1).to(device)
            self.src = (~destinations).nonzero().squeeze(-1).to(device)
            self.r = min(r, self.src.numel())
            unit = metric / metric.norm(dim=-1, keepdim=True)
            similarity = unit[:, self.src] @ unit[:, self.dst].transpose(-1, -2)
            best_similarity, best_destination = similarity.max(dim=-1)
            order = torch.sort(best_similarity, dim=-1, descending=True, stable=True).indices
            self.merged, self.kept = order[:, :self.r], order[:, self.r:]  # positions in the source list
            self.targets = best_destination.gather(1, self.merged)  # positions in the destination list

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """The kept sources, then the destinations each averaged with the sources merged into it."""
        channels = x.shape[-1]
        sources, destinations = x[:, self.src], x[:, self.dst]
        kept = sources.gather(1, _along_tokens(self.kept, channels))
        moving = sources.gather(1, _along_tokens(self.merged, channels))
        destinations = destinations.scatter_reduce(1, _along_tokens(self.targets, channels), moving,
                                                   reduce="mean", include_self=True)
        return torch.cat([kept, destinations], dim=1)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """Every token back in its place: a kept source and a destination their own output, a merged
        source its destination's."""
        batch, _, channels = x.shape
        kept, destinations = x[:, :self.kept.shape[1]], x[:, self.kept.shape[1]:]
        out = x.new_empty(batch, self.tokens, channels)
        out[:, self.dst] = destinations
        out.scatter_(1, _along_tokens(self.src[self.kept], channels), kept)
        out.scatter_(1, _along_tokens(self.src[self.merged], channels),
                     destinations.gather(1, _along_tokens(self.targets, channels)))
        return out


def bipartite_soft_matching_2d(metric: torch.Tensor, height: int, width: int, r: int,
                               stride: Tuple[int, int] = DEFAULT_STRIDE,
                               generator: Optional[torch.Generator] = None) -> TokenMerge:
    """The matching of the (b, height * width, c) tokens ``metric`` that merges ``r`` sources into
    the destinations of :func:`destination_tokens` (at most every source)."""
    if metric.shape[1] != height * width:
        raise ValueError(f"{metric.shape[1]} tokens do not form a {height}x{width} grid")
    return TokenMerge(metric, destination_tokens(height, width, stride, generator), r)


class TokenMerging:
    """The settings of one sampling run with token merging, and the latent size of the UNet's
    current call (which tells each transformer block its grid)."""

    def __init__(self, ratio: float, max_downsample: int = DEFAULT_MAX_DOWNSAMPLE,
                 stride: Tuple[int, int] = DEFAULT_STRIDE, random_destinations: bool = True,
                 seed: int = DEFAULT_SEED):
        self.ratio = check_ratio(ratio)
        if isinstance(max_downsample, bool) or not isinstance(max_downsample, int) or max_downsample < 1:
            raise ValueError(f"max_downsample must be a whole number >= 1, got {max_downsample!r}")
        self.max_downsample, self.stride = max_downsample, tuple(stride)
        self.generator = torch.Generator().manual_seed(seed) if random_destinations else None
        self.latent_size: Optional[Tuple[int, int]] = None

    def grid(self, tokens: int) -> Optional[Tuple[int, int]]:
        """(height, width) of a block's ``tokens`` when the block is at most ``max_downsample`` times
        (a power of 2) below the latent, else None."""
        if self.latent_size is None:
            return None
        height, width = self.latent_size
        factor = 1
        while factor <= self.max_downsample:
            size = (-(-height // factor), -(-width // factor))  # stride-2 downsampling rounds up
            if size[0] * size[1] == tokens:
                return size
            factor *= 2
        return None

    def plan(self, x: torch.Tensor) -> Optional[TokenMerge]:
        """The matching for a block's input ``x`` (b, N, c), or None where nothing is merged."""
        r = int(x.shape[1] * self.ratio)
        size = self.grid(x.shape[1]) if r > 0 else None
        if size is None:
            return None
        return bipartite_soft_matching_2d(x, *size, r, self.stride, self.generator)

    def record_latent_size(self, unet: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward pre-hook of the UNet: the spatial size of its input ``x``."""
        x = args[0] if args else kwargs["x"]
        self.latent_size = tuple(x.shape[-2:])


@contextlib.contextmanager
def token_merging(unet: nn.Module, ratio: Optional[float], max_downsample: int = DEFAULT_MAX_DOWNSAMPLE,
                  stride: Tuple[int, int] = DEFAULT_STRIDE, random_destinations: bool = True,
                  seed: int = DEFAULT_SEED) -> Iterator[Optional[TokenMerging]]:
    """Sample with token merging on ``unet`` (a ``UNetModel``) inside the ``with`` block, the
    destinations' generator seeded with ``seed``; ``ratio`` None leaves the UNet as it is. Nothing
    is stored in the state dict. Yields the settings, or None."""
    if ratio is None:
        yield None
        return
    merging = TokenMerging(ratio, max_downsample, stride, random_destinations, seed)
    blocks = [module for module in unet.modules() if isinstance(module, BasicTransformerBlock)]
    previous = [block.token_merging for block in blocks]
    hook = unet.register_forward_pre_hook(merging.record_latent_size, with_kwargs=True)
    for block in blocks:
        block.token_merging = merging
    try:
        yield merging
    finally:
        hook.remove()
        for block, setting in zip(blocks, previous):
            block.token_merging = setting
