"""DeepCache (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free", sec. 3.2-3.3):
the deep features of the UNet change little from one denoising step to the next, so a full
forward every ``interval`` steps caches the input of the shallow end of the decoder, and the
steps in between run only the shallow branch: the first ``depth + 1`` encoder blocks and the
last ``depth + 1`` decoder blocks, joined by their skip connections, with the cached deep
features in place of everything below them. Training-free; ``interval`` 1 is the plain UNet.

``depth`` 1 is the paper's shallowest branch for Stable Diffusion (skip branch 0: the first
down block and the up block it feeds, plus the input convolution's skip to the last up block).

The cache works in the model call path, so every sampler gets it: a "step" is a model
evaluation at a new timestep (a second call at the same timestep, e.g. the unconditional half of
guidance run separately, is another slot of the same step and keeps features of its own), and
a timestep above the previous one starts a new sampling run with a full forward.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn as nn

# The skip branch of the paper's Stable Diffusion setting (the shallowest one).
DEFAULT_DEPTH = 1


class DeepCache:
    """The cached deep features of one sampling run, and the rule that says when to refresh them."""

    def __init__(self, interval: int, depth: int = DEFAULT_DEPTH):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"cache interval must be a positive whole number of steps, got {interval!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"cache depth must be a whole number >= 0, got {depth!r}")
        self.interval, self.depth = interval, depth
        self.reset()

    def reset(self) -> None:
        """Forget the cached features: the next evaluation is a full forward."""
        self.step = -1
        self.slot = 0
        self.last_timestep: Optional[float] = None
        self.features: Dict[int, torch.Tensor] = {}
        self.full_evaluations = self.shallow_evaluations = 0

    def _advance(self, timesteps: torch.Tensor) -> bool:
        """Count this call; True when it must run the full UNet."""
        timestep = float(timesteps.reshape(-1)[0])
        if self.last_timestep is None or timestep > self.last_timestep:
            self.features, self.step, self.slot = {}, 0, 0
        elif timestep < self.last_timestep:
            self.step, self.slot = self.step + 1, 0
        else:
            self.slot += 1
        self.last_timestep = timestep
        return self.step % self.interval == 0 or self.slot not in self.features

    def run_blocks(self, unet: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: Any,
                   timesteps: torch.Tensor) -> torch.Tensor:
        """The encoder, middle and decoder blocks of ``unet`` on ``h`` (what ``UNetModel.forward``
        runs between its embeddings and its output head), the deep part from the cache between
        refreshes."""
        depth = min(self.depth, len(unet.input_blocks) - 1, len(unet.output_blocks) - 1)
        full = self._advance(timesteps)
        cached = None if full else self.features[self.slot]
        if cached is not None and cached.shape[0] != h.shape[0]:
            cached, full = None, True
        encoder = unet.input_blocks if full else unet.input_blocks[:depth + 1]
        skips = []
        for module in encoder:
            h = module(h, emb, context)
            skips.append(h)
        shallow_start = len(unet.output_blocks) - depth - 1
        if full:
            h = deep_features(unet, h, skips, emb, context, shallow_start)
            self.features[self.slot] = h
            self.full_evaluations += 1
        else:
            h = cached
            self.shallow_evaluations += 1
        for module in unet.output_blocks[shallow_start:]:
            h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
        return h


def deep_features(unet: nn.Module, h: torch.Tensor, skips: List[torch.Tensor], emb: torch.Tensor, context: Any,
                  shallow_start: int) -> torch.Tensor:
    """The middle block and the decoder blocks before ``shallow_start`` (taking their skips off
    ``skips``): the features the shallow decoder blocks take as input."""
    h = unet.middle_block(h, emb, context)
    for module in unet.output_blocks[:shallow_start]:
        h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
    return h


@contextlib.contextmanager
def deep_cache(unet: nn.Module, interval: Optional[int], depth: int = DEFAULT_DEPTH) -> Iterator[Optional[DeepCache]]:
    """Sample with DeepCache on ``unet`` (a ``UNetModel``) inside the block, with a fresh cache;
    ``interval`` None leaves the UNet as it is. Yields the cache (its counts of full and shallow
    evaluations), or None."""
    if interval is None:
        yield None
        return
    cache = DeepCache(interval, depth)
    previous, unet.feature_cache = unet.feature_cache, cache
    try:
        yield cache
    finally:
        unet.feature_cache = previous
