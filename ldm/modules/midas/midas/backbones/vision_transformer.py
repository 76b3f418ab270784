"""timm's ``VisionTransformer`` (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") with
timm's parameter names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``), for the DPT backbones:
ViT-L/16 and ViT-B/16 at 384, and the hybrid ViT-B/16 whose patch embedding is a 1x1 projection
of ResNet-50 features (``vit_base_resnet50_384``). ``forward_flex`` runs any input whose sides
are multiples of the patch size, resizing the position embedding to its grid as DPT does."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.midas.midas.backbones.resnetv2 import ResNetV2


@dataclass(frozen=True)
class ViTSpec:
    """The sizes of a vision transformer (defaults: ViT-B/16 at 384 x 384)."""
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    img_size: int = 384
    patch_size: int = 16
    num_classes: int = 1000


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the embedding width ({dim}) must be a multiple of the number of heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches, each projected to the embedding width by one strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return self.proj(x).flatten(2).transpose(1, 2), []


class HybridEmbed(nn.Module):
    """Tokens from a CNN's last feature map by a 1x1 projection (timm ``HybridEmbed``, patch size 1)."""

    def __init__(self, backbone: ResNetV2, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Conv2d(backbone.num_features, embed_dim, kernel_size=1, stride=1)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        stages = self.backbone.forward_stages(x)
        return self.proj(stages[-1]).flatten(2).transpose(1, 2), stages


def resize_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int, start_index: int = 1) -> torch.Tensor:
    """The position embedding (1, start_index + g*g, C) of a square g x g grid, with its grid part
    resized bilinearly (align_corners=False) to grid_h x grid_w (DPT ``_resize_pos_embed``)."""
    tokens, grid = pos_embed[:, :start_index], pos_embed[0, start_index:]
    old = int(math.sqrt(len(grid)))
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    return torch.cat([tokens, grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT with a class token, learned position embedding, pre-norm blocks, final LayerNorm and an
    ImageNet head (kept for the weights' layout; DPT does not use it)."""

    def __init__(self, spec: ViTSpec = ViTSpec(), hybrid_backbone: Optional[ResNetV2] = None, in_chans: int = 3):
        super().__init__()
        self.spec = spec
        self.start_index = 1
        self.patch_size = [spec.patch_size, spec.patch_size]
        grid = spec.img_size // spec.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, spec.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if hybrid_backbone is None:
            self.patch_embed = PatchEmbed(spec.patch_size, in_chans, spec.embed_dim)
        else:
            self.patch_embed = HybridEmbed(hybrid_backbone, spec.embed_dim)
        self.blocks = nn.Sequential(*[Block(spec.embed_dim, spec.num_heads, spec.mlp_ratio)
                                      for _ in range(spec.depth)])
        self.norm = nn.LayerNorm(spec.embed_dim, eps=1e-6)
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)

    def _resize_pos_embed(self, posemb: torch.Tensor, gs_h: int, gs_w: int) -> torch.Tensor:
        return resize_pos_embed(posemb, gs_h, gs_w, self.start_index)

    def forward_flex(self, x: torch.Tensor, taps: Sequence[int] = ()
                     ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """Run an image (B, C, H, W), H and W multiples of the patch size. Returns the normed
        tokens, the hybrid backbone's stage outputs (empty for plain patches) and the outputs of
        the blocks listed in ``taps`` (before the final norm), in the order of ``taps``."""
        _, _, height, width = x.shape
        pos_embed = self._resize_pos_embed(self.pos_embed, height // self.patch_size[1], width // self.patch_size[0])
        tokens, stage_outputs = self.patch_embed.forward_features(x)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1) + pos_embed
        tapped = {}
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in taps:
                tapped[index] = tokens
        return self.norm(tokens), stage_outputs, [tapped[index] for index in taps]
