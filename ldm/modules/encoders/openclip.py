"""CLIP text and image towers (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision") with the parameter names of ``open_clip`` and OpenAI's ``clip`` packages, so
that checkpoints written by the original code load unchanged -- without either package.

Architectures are described by :class:`CLIPArch`; known names (``ViT-H-14``, ``ViT-L/14``, ...) map
to built-in descriptions, so building a tower never downloads anything. :func:`create_openclip_model`
uses ``open_clip`` when it imports (and no ``LDM_NATIVE_CLIP=1`` is set), else our own modules.
"""
from __future__ import annotations

import importlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

NATIVE_ENV = "LDM_NATIVE_CLIP"


@dataclass(frozen=True)
class CLIPArch:
    """Sizes of a CLIP model. ``openai_layout``: residual blocks hold ``attn, ln_1, mlp, ln_2`` in
    that order (OpenAI's ``clip`` package) rather than ``ln_1, attn, ln_2, mlp`` (open_clip)."""
    embed_dim: int
    text_width: int
    text_heads: int
    text_layers: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_size: int = 224
    vision_mlp_ratio: float = 4.0
    context_length: int = 77
    vocab_size: int = 49408
    quick_gelu: bool = False
    openai_layout: bool = False


# Facts from open_clip's model_configs/*.json (vision heads = width // head_width, head_width 64 unless given).
OPENCLIP_ARCHS = {
    "ViT-B-32": CLIPArch(512, 512, 8, 12, 768, 12, 12, 32),
    "ViT-B-16": CLIPArch(512, 512, 8, 12, 768, 12, 12, 16),
    "ViT-L-14": CLIPArch(768, 768, 12, 12, 1024, 24, 16, 14),
    "ViT-H-14": CLIPArch(1024, 1024, 16, 24, 1280, 32, 16, 14),
    "ViT-g-14": CLIPArch(1024, 1024, 16, 24, 1408, 40, 16, 14, vision_mlp_ratio=4.3637),
    "ViT-bigG-14": CLIPArch(1280, 1280, 20, 32, 1664, 48, 16, 14, vision_mlp_ratio=4.9231),
}

# OpenAI's released models (names as ``clip.load`` takes them): QuickGELU, OpenAI block layout.
OPENAI_ARCHS = {
    "ViT-B/32": CLIPArch(512, 512, 8, 12, 768, 12, 12, 32, quick_gelu=True, openai_layout=True),
    "ViT-B/16": CLIPArch(512, 512, 8, 12, 768, 12, 12, 16, quick_gelu=True, openai_layout=True),
    "ViT-L/14": CLIPArch(768, 768, 12, 12, 1024, 24, 16, 14, quick_gelu=True, openai_layout=True),
    "ViT-L/14@336px": CLIPArch(768, 768, 12, 12, 1024, 24, 16, 14, image_size=336, quick_gelu=True,
                               openai_layout=True),
}


def openclip_arch(name: str, pretrained: Optional[str] = None) -> CLIPArch:
    """The built-in description of an open_clip architecture name (``-quickgelu`` suffix, or the
    ``openai`` weights, select QuickGELU as open_clip does)."""
    base = name[:-len("-quickgelu")] if name.endswith("-quickgelu") else name
    if base not in OPENCLIP_ARCHS:
        raise ValueError(f"unknown OpenCLIP architecture {name!r}; known: {', '.join(OPENCLIP_ARCHS)}")
    arch = OPENCLIP_ARCHS[base]
    return replace(arch, quick_gelu=True) if base != name or pretrained == "openai" else arch


def openai_arch(name: str) -> CLIPArch:
    if name not in OPENAI_ARCHS:
        raise ValueError(f"unknown OpenAI CLIP model {name!r}; known: {', '.join(OPENAI_ARCHS)}")
    return OPENAI_ARCHS[name]


def resized_arch(arch: CLIPArch, arch_overrides: Optional[Mapping[str, Any]]) -> CLIPArch:
    """``arch`` with the sizes named in ``arch_overrides`` (:class:`CLIPArch` fields) replaced. The
    encoders' ``arch_overrides`` param is ours, not the originals': it shrinks an original config's
    towers to toy size for tests (``tests/tiny_configs.py``) without another architecture name."""
    if not arch_overrides:
        return arch
    known = [field.name for field in fields(CLIPArch)]
    unknown = sorted(set(arch_overrides) - set(known))
    if unknown:
        raise ValueError(f"arch_overrides: unknown CLIP size(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return replace(arch, **{name: arch_overrides[name] for name in arch_overrides})


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names (packed
    ``in_proj_weight``/``in_proj_bias``, ``out_proj``), computed batch-first with SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        mask = attn_mask.to(q.dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (Radford et al. 2019)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False,
                 openai_layout: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)),
                                         ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                                         ("c_proj", nn.Linear(hidden, width))]))
        attn, ln_1, ln_2 = SelfAttention(width, heads), nn.LayerNorm(width), nn.LayerNorm(width)
        if openai_layout:
            self.attn, self.ln_1, self.mlp, self.ln_2 = attn, ln_1, mlp, ln_2
        else:
            self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks (batch-first; ``grad_checkpointing`` as open_clip names it)."""

    batch_first = True

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 quick_gelu: bool = False, openai_layout: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu, openai_layout) for _ in range(layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP's initialisation of the blocks (Radford et al. 2021, released code)."""
        proj_std = self.width ** -0.5 * (2 * self.layers) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=self.width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return run_blocks(self, self.resblocks, x, attn_mask)


def run_blocks(transformer: nn.Module, blocks, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Apply ``blocks`` in turn, with activation checkpointing when the transformer asks for it."""
    for block in blocks:
        if getattr(transformer, "grad_checkpointing", False) and torch.is_grad_enabled():
            x = checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    return x


def causal_mask(length: int) -> torch.Tensor:
    """Additive attention mask: 0 on and below the diagonal, -inf above (token i sees j <= i)."""
    return torch.full((length, length), float("-inf")).triu_(1)


class VisionTransformer(nn.Module):
    """ViT image tower (Dosovitskiy et al. 2021): patch embedding, class token, learned positions,
    ln_pre, transformer, ln_post on the class token, projection to the joint embedding."""

    def __init__(self, arch: CLIPArch):
        super().__init__()
        width, grid = arch.vision_width, arch.image_size // arch.patch_size
        scale = width ** -0.5
        self.image_size = (arch.image_size, arch.image_size)
        self.conv1 = nn.Conv2d(3, width, kernel_size=arch.patch_size, stride=arch.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, arch.vision_layers, arch.vision_heads, arch.vision_mlp_ratio,
                                       arch.quick_gelu, arch.openai_layout)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, arch.embed_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP with open_clip's / OpenAI's attribute names. ``with_visual=False`` drops the image tower
    and ``with_text_transformer=False`` the text blocks (what ``FrozenOpenCLIPEmbedder`` and
    ``FrozenOpenCLIPImageEmbedder`` delete); the other text parameters are always kept, as there."""

    def __init__(self, arch: CLIPArch, with_visual: bool = True, with_text_transformer: bool = True):
        super().__init__()
        width = arch.text_width
        if with_visual:
            self.visual = VisionTransformer(arch)
        if with_text_transformer:
            self.transformer = Transformer(width, arch.text_layers, arch.text_heads, 4.0,
                                           arch.quick_gelu, arch.openai_layout)
        self.context_length, self.vocab_size = arch.context_length, arch.vocab_size
        self.token_embedding = nn.Embedding(arch.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(arch.context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, arch.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.register_buffer("attn_mask", causal_mask(arch.context_length), persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected text embedding, read at the end token (the highest id in each row)."""
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n].to(self.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection


def use_native_towers() -> bool:
    return os.environ.get(NATIVE_ENV, "").strip().lower() in ("1", "true", "yes")


def create_openclip_model(arch: str, version: Optional[str], with_visual: bool,
                          with_text_transformer: bool, arch_overrides: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """An OpenCLIP model without pretrained weights (the checkpoint brings them): from ``open_clip``
    when it imports, else our own :class:`CLIP` with the same names and maths (always ours when
    ``arch_overrides`` resizes it, see :func:`resized_arch`)."""
    model = None if use_native_towers() or arch_overrides else _open_clip_model(arch, version)
    if model is None:
        return CLIP(resized_arch(openclip_arch(arch, version), arch_overrides), with_visual, with_text_transformer)
    if not with_visual:
        del model.visual
    if not with_text_transformer:
        del model.transformer
    return model


def _open_clip_model(arch: str, version: Optional[str]) -> Optional[nn.Module]:
    try:
        open_clip = importlib.import_module("open_clip")  # optional, imported only here
    except Exception:  # not installed, or its torchvision import is broken: use our towers
        return None
    current_default_device = torch.empty(0).device  # "meta" inside ``with torch.device("meta")``
    return open_clip.create_model(arch, pretrained=None, device=current_default_device,
                                  force_quick_gelu=version == "openai")
