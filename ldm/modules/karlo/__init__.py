"""Kakao Brain's Karlo unCLIP prior (text -> CLIP ViT-L/14 image embedding), with the original
module paths under :mod:`ldm.modules.karlo.kakao`, and the small API the unCLIP task uses:
``load_prior(config, ckpt, clip, clip_stats, device="cpu") -> KarloPrior`` and
``KarloPrior.sample(prompts, *, steps=25, guidance_scale=4.0, generator=None, seeds=None)``.
See docs/KARLO.md for the files it needs."""
from ldm.modules.karlo.files import KarloFileError
from ldm.modules.karlo.prior import KarloPrior, load_prior

__all__ = ["KarloFileError", "KarloPrior", "load_prior"]
