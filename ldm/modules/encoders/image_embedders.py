"""CLIP image embedders for unCLIP (image variations): images in [-1, 1] -> CLIP image embeddings.

The towers are built without weights and without network (the checkpoint brings the weights):
OpenCLIP architectures via :func:`create_openclip_model`, OpenAI's models with our own
:class:`~ldm.modules.encoders.openclip.CLIP` (whose names match OpenAI's ``clip`` package).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.encoders.base import AbstractEncoder
from ldm.modules.encoders.openclip import CLIP, create_openclip_model, openai_arch, resized_arch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _input_size(visual: nn.Module) -> Tuple[int, int]:
    size = getattr(visual, "image_size", None) or getattr(visual, "input_resolution", 224)
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def drop_rows(z: torch.Tensor, rate: float) -> torch.Tensor:
    """Zero each row with probability ``rate`` (unconditional-guidance dropout of the original)."""
    keep = torch.bernoulli((1.0 - rate) * torch.ones(z.shape[0], device=z.device))
    return keep[:, None] * z


class _CLIPPreprocessing(nn.Module):
    """Resize to the tower's input size (bicubic), map [-1, 1] to [0, 1], normalise with CLIP's
    mean and std (non-persistent buffers ``mean``/``std``, as the original)."""

    def _register_clip_stats(self) -> None:
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        import kornia

        x = kornia.geometry.resize(x, _input_size(self.model.visual), interpolation="bicubic",
                                   align_corners=True, antialias=self.antialias)
        x = (x + 1.0) / 2.0
        return kornia.enhance.normalize(x, self.mean, self.std)


class ClipImageEmbedder(_CLIPPreprocessing):
    """OpenAI CLIP image embedding (unCLIP-L: ``model="ViT-L/14"``, 768-d). ``self.model`` is the
    whole CLIP model, text tower included, as ``clip.load`` returns it. ``jit`` is accepted for
    config compatibility (there is no TorchScript model here). Rows are zeroed with probability
    ``ucg_rate`` unless ``no_dropout``. ``arch_overrides`` (ours) resizes the model for tests
    (:func:`~ldm.modules.encoders.openclip.resized_arch`)."""

    def __init__(self, model: str, jit: bool = False, device=None, antialias: bool = True, ucg_rate: float = 0.0,
                 arch_overrides: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.model = CLIP(resized_arch(openai_arch(model), arch_overrides))
        self.antialias = antialias
        self._register_clip_stats()
        self.ucg_rate = ucg_rate
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor, no_dropout: bool = False) -> torch.Tensor:
        out = self.model.encode_image(self.preprocess(x)).to(x.dtype)
        if self.ucg_rate > 0.0 and not no_dropout:
            out = drop_rows(out, self.ucg_rate)
        return out


class FrozenClipImageEmbedder(ClipImageEmbedder):
    """The LDM variant of :class:`ClipImageEmbedder` (no antialiasing by default, no dropout)."""

    def __init__(self, model: str, jit: bool = False, device=None, antialias: bool = False):
        super().__init__(model, jit=jit, device=device, antialias=antialias, ucg_rate=0.0)


class FrozenOpenCLIPImageEmbedder(AbstractEncoder, _CLIPPreprocessing):
    """OpenCLIP image embedding (unCLIP-H: ViT-H-14, 1024-d, pooled and projected). As in the
    original, the text blocks are deleted but the other text parameters stay in ``self.model``.
    ``arch_overrides`` (ours) resizes the model for tests (see :class:`ClipImageEmbedder`)."""

    def __init__(self, arch: str = "ViT-H-14", version: str = "laion2b_s32b_b79k", device=None, max_length: int = 77,
                 freeze: bool = True, layer: str = "pooled", antialias: bool = True, ucg_rate: float = 0.0,
                 arch_overrides: Optional[Mapping[str, Any]] = None):
        super().__init__()
        if layer != "pooled":
            raise NotImplementedError(f"FrozenOpenCLIPImageEmbedder supports layer='pooled' only, got {layer!r}")
        self.model = create_openclip_model(arch, version, with_visual=True, with_text_transformer=False,
                                           arch_overrides=arch_overrides)
        self.device = device
        self.max_length = max_length
        self.layer = layer
        self.antialias = antialias
        self._register_clip_stats()
        self.ucg_rate = ucg_rate
        if freeze:
            self.freeze()

    def forward(self, image: torch.Tensor, no_dropout: bool = False) -> torch.Tensor:
        z = self.encode_with_vision_transformer(image)
        if self.ucg_rate > 0.0 and not no_dropout:
            z = drop_rows(z, self.ucg_rate)
        return z

    def encode_with_vision_transformer(self, img: torch.Tensor) -> torch.Tensor:
        return self.model.visual(self.preprocess(img))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self(image)
