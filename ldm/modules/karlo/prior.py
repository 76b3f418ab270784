"""Text -> CLIP ViT-L/14 image embeddings with Karlo's prior: the small API that text-to-image
unCLIP uses (the embeddings are what Stable unCLIP-L takes as ``c_adm``).

    prior = load_prior("configs/karlo/prior_1B_vit_l.yaml", "prior-ckpt-step=01000000-of-01000000.ckpt",
                       "clip-vit-large-patch14/", "ViT-L-14_stats.th", device="cpu")
    embeddings = prior.sample(["a teddy bear on a skateboard"], seeds=[42])   # [1, 768]

Sampling as Karlo's ``PriorSampler`` with its "default" settings: 25 respaced steps of ancestral
sampling, guidance scale 4, x_0 predictions clamped to [-10, 10], in float32.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Union

import torch

from ldm.modules.encoders.tokenizer import as_prompt_list
from ldm.modules.karlo.files import CLIP_WEIGHTS_HELP, KarloFileError, read_clip_stats, read_prior_config
from ldm.modules.karlo.kakao.models.clip import CustomizedCLIP, CustomizedTokenizer
from ldm.modules.karlo.kakao.models.prior_model import PriorDiffusionModel
from ldm.modules.karlo.kakao.modules.diffusion.gaussian_diffusion import NoiseFn

DEFAULT_STEPS = 25  # SAMPLING_CONF["default"]["prior_sm"] of the original
DEFAULT_GUIDANCE_SCALE = 4.0  # SAMPLING_CONF["default"]["prior_cf_scale"]
SEED_LIMIT = 2 ** 64  # torch generators take seeds below 2**64


class KarloPrior:
    """Karlo's prior with the CLIP text encoder and tokenizer it reads prompts with."""

    def __init__(self, prior: PriorDiffusionModel, clip: CustomizedCLIP, tokenizer: CustomizedTokenizer):
        self.prior = prior
        self.clip = clip
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.prior.clip_mean.device

    @property
    def num_timesteps(self) -> int:
        """The number of diffusion steps the prior was trained with (the most ``steps`` can be)."""
        return self.prior.num_timesteps

    def to(self, device: Union[str, torch.device]) -> "KarloPrior":
        self.prior.to(device)
        self.clip.to(device)
        return self

    def sample(self, prompts: List[str], *, steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
               generator: Optional[torch.Generator] = None, seeds: Optional[List[int]] = None) -> torch.Tensor:
        """CLIP image embeddings ``[len(prompts), clip_dim]`` (unnormalised, as CLIP's image tower
        gives them) for ``prompts``, by ``steps`` respaced steps with classifier-free guidance.

        Noise: with ``seeds``, prompt i draws all of its noise from a CPU generator seeded with
        ``seeds[i]``, so its embedding depends on its prompt and seed only (not on the batch); with
        ``generator``, the batch draws from it; with neither, from torch's global CPU generator.
        """
        prompts = as_prompt_list(prompts)
        self._check_settings(steps, guidance_scale)
        noise_fn = _noise_source(len(prompts), generator, seeds, self.device)
        text_ctx = self.prior.model.text_ctx
        tokens, mask = self.tokenizer.padded_tokens_and_mask(prompts, text_ctx)
        batch = len(prompts)
        tokens = torch.cat([tokens.to(self.device), self.prior.cf_token.expand(batch, -1)])
        mask = torch.cat([mask.to(self.device), self.prior.cf_mask.expand(batch, -1)])
        with torch.no_grad():
            txt_feat, txt_feat_seq = self.clip.encode_text(tokens)
            scales = torch.full((batch,), float(guidance_scale), device=self.device)
            return self.prior(txt_feat.float(), txt_feat_seq.float(), mask, scales, timestep_respacing=str(steps),
                              noise_fn=noise_fn)

    def _check_settings(self, steps: int, guidance_scale: float) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be an integer from 1 to {self.num_timesteps}, got {steps!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale) or guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be a number > 0, got {guidance_scale!r}")


def _noise_source(batch: int, generator: Optional[torch.Generator], seeds: Optional[Sequence[int]],
                  device: torch.device) -> NoiseFn:
    """``noise_fn(shape)`` for a batch of ``batch`` rows: per-row seeded CPU generators, one
    generator for the batch, or torch's global CPU generator."""
    if seeds is not None and generator is not None:
        raise ValueError("pass either seeds or generator, not both")
    if seeds is not None:
        seeds = list(seeds)
        if len(seeds) != batch or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT
                                          for s in seeds):
            raise ValueError(f"seeds must be {batch} integers in [0, 2**64) (one per prompt), got {seeds!r}")
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        return lambda shape: torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators]).to(device)
    if generator is not None:
        return lambda shape: torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)
    return lambda shape: torch.randn(tuple(shape)).to(device)


def load_prior(config: str, ckpt: str, clip: str, clip_stats: str, device: Union[str, torch.device] = "cpu"
               ) -> KarloPrior:
    """Karlo's prior from local files: its YAML ``config`` (``configs/karlo/prior_1B_vit_l.yaml``),
    its checkpoint ``ckpt`` (``prior-ckpt-step=01000000-of-01000000.ckpt``), the CLIP ViT-L/14
    weights ``clip`` (a state dict with OpenAI's names, or a transformers ``CLIPModel`` directory)
    and ``clip_stats`` (``ViT-L-14_stats.th``). Nothing is downloaded. A missing or wrong file raises
    :class:`~ldm.modules.karlo.files.KarloFileError` (a ``ValueError``) naming it; the small files
    are checked before the large ones are read."""
    prior_config = read_prior_config(config)
    clip_dim = int(prior_config.model.hparams.clip_dim)
    clip_mean, clip_std = read_clip_stats(clip_stats, clip_dim)
    if not os.path.isfile(ckpt):
        raise KarloFileError(f"Karlo prior checkpoint (prior-ckpt-step=01000000-of-01000000.ckpt) not found: {ckpt}")
    if not os.path.exists(clip):
        raise KarloFileError(f"{CLIP_WEIGHTS_HELP} not found: {clip}")
    clip_model = CustomizedCLIP.load_from_checkpoint(clip)
    _check_clip_fits(clip, clip_model, clip_dim, int(prior_config.model.hparams.text_ctx))
    tokenizer = CustomizedTokenizer()
    prior = PriorDiffusionModel.load_from_checkpoint(prior_config, tokenizer, clip_mean, clip_std, ckpt)
    return KarloPrior(prior, clip_model, tokenizer).to(torch.device(device))


def _check_clip_fits(path: str, clip: CustomizedCLIP, clip_dim: int, text_ctx: int) -> None:
    """The prior reads CLIP's token features and projected embedding, both ``clip_dim`` wide."""
    width, embed_dim = clip.ln_final.weight.shape[0], clip.text_projection.shape[1]
    if (width, embed_dim) != (clip_dim, clip_dim) or clip.context_length < text_ctx:
        raise KarloFileError(f"{path}: a CLIP text tower of width {width}, embedding {embed_dim}, "
                             f"{clip.context_length} tokens does not fit the prior (clip_dim {clip_dim}, "
                             f"text_ctx {text_ctx}); expected CLIP ViT-L/14")
