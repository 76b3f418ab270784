"""Karlo's ``PriorSampler`` (``ldm/modules/karlo/kakao/sampler.py``), as Stability's unCLIP demo
uses it: ``PriorSampler.from_pretrained(root_dir, clip_model_path, clip_stat_path)`` then
``next(sampler(prompt, bsz, progressive_mode="final"))`` -> ``[bsz, 768]`` image embeddings.
Karlo's full text-to-image ``T2ISampler`` (its own decoder and upsampler) is not part of ldm."""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from ldm.modules.karlo.kakao.template import CKPT_PATH, PRIOR_CONFIG, BaseSampler
from ldm.modules.karlo.prior import KarloPrior

PROGRESSIVE_MODES = ("loop", "stage", "final")


class PriorSampler(BaseSampler):
    """Text -> CLIP image embeddings with the prior only."""

    def __init__(self, root_dir: str, sampling_type: str = "default"):
        super().__init__(root_dir, sampling_type)

    @classmethod
    def from_pretrained(cls, root_dir: str, clip_model_path: str, clip_stat_path: str,
                        sampling_type: str = "default", device: Optional[str] = None) -> "PriorSampler":
        """The CLIP and the prior from ``root_dir`` (``CKPT_PATH["prior"]`` there), on ``device``
        (default: where they were loaded, the CPU)."""
        sampler = cls(root_dir=root_dir, sampling_type=sampling_type)
        sampler.load_clip(clip_model_path)
        sampler.load_prior(CKPT_PATH["prior"], clip_stat_path=clip_stat_path, prior_config=PRIOR_CONFIG)
        if device is not None:
            sampler._prior.to(device)
            sampler._clip.to(device)
        return sampler

    def __call__(self, prompt: str, bsz: int, progressive_mode: Optional[str] = None) -> Iterator[torch.Tensor]:
        """Yields ``[bsz, clip_dim]`` image embeddings of ``prompt`` (once, whatever the mode)."""
        if progressive_mode not in PROGRESSIVE_MODES:
            raise ValueError(f"progressive_mode must be one of {', '.join(PROGRESSIVE_MODES)}, "
                             f"got {progressive_mode!r}")
        prior = KarloPrior(self._prior, self._clip, self._tokenizer)
        yield prior.sample([prompt] * bsz, steps=int(self._prior_sm), guidance_scale=self._prior_cf_scale)
