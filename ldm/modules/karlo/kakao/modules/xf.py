"""The unCLIP prior's network (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation
with CLIP Latents", sec. 2.1, "diffusion prior"): a decoder-only transformer over the sequence

    [projected CLIP text tokens (text_ctx), text embedding, timestep embedding, noised image
     embedding, learned query "prd"]

with a causal mask and the text padding masked out; the output at the last position, projected to
``clip_dim``, is the prediction (here of the clean image embedding). Parameter names are Karlo's
(``ldm/modules/karlo/kakao/modules/xf.py``), so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.util import timestep_embedding


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype (fp16-safe), cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QKVMultiheadAttention(nn.Module):
    """Scaled dot-product attention over packed ``qkv`` features. The packing is per head: the
    ``3 * width`` features are ``heads`` groups of ``[q_h, k_h, v_h]`` (each ``width / heads``), as
    Karlo's ``c_qkv`` weights are laid out. ``mask`` is additive, ``[batch, n_ctx, n_ctx]``."""

    def __init__(self, n_heads: int, n_ctx: int):
        super().__init__()
        self.n_heads = n_heads
        self.n_ctx = n_ctx

    def forward(self, qkv: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, n_ctx, width3 = qkv.shape
        head_dim = width3 // self.n_heads // 3
        q, k, v = qkv.view(batch, n_ctx, self.n_heads, 3 * head_dim).transpose(1, 2).split(head_dim, dim=-1)
        attn_mask = None if mask is None else mask[:, None].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out.transpose(1, 2).reshape(batch, n_ctx, head_dim * self.n_heads)


class MultiheadAttention(nn.Module):
    """Self-attention: ``c_qkv`` (packed per head), attention, ``c_proj``."""

    def __init__(self, n_ctx: int, width: int, heads: int):
        super().__init__()
        self.n_ctx = n_ctx
        self.width = width
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)
        self.attention = QKVMultiheadAttention(heads, n_ctx)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.c_proj(self.attention(self.c_qkv(x), mask=mask))


class MLP(nn.Module):
    """width -> 4 width -> width with the exact (erf) GELU."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, n_ctx: int, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(n_ctx, width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask=mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks (``resblocks``)."""

    def __init__(self, n_ctx: int, width: int, layers: int, heads: int):
        super().__init__()
        self.n_ctx = n_ctx
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(n_ctx, width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask=mask)
        return x


class PriorTransformer(nn.Module):
    """The causal transformer of the diffusion prior.

    :param text_ctx: number of CLIP text tokens (77).
    :param xf_width: width of the transformer.
    :param xf_layers: number of residual blocks.
    :param xf_heads: attention heads.
    :param xf_final_ln: a LayerNorm before the output projection.
    :param clip_dim: width of the CLIP embeddings (text tokens, text and image embeddings).
    """

    ext_len = 4  # text embedding, timestep, noised image embedding, prd query

    def __init__(self, text_ctx: int, xf_width: int, xf_layers: int, xf_heads: int, xf_final_ln: bool,
                 clip_dim: int):
        super().__init__()
        self.text_ctx = text_ctx
        self.xf_width = xf_width
        self.xf_layers = xf_layers
        self.xf_heads = xf_heads
        self.clip_dim = clip_dim
        self.time_embed = nn.Sequential(nn.Linear(xf_width, xf_width), nn.SiLU(), nn.Linear(xf_width, xf_width))
        self.text_enc_proj = nn.Linear(clip_dim, xf_width)
        self.text_emb_proj = nn.Linear(clip_dim, xf_width)
        self.clip_img_proj = nn.Linear(clip_dim, xf_width)
        self.out_proj = nn.Linear(xf_width, clip_dim)
        self.transformer = Transformer(text_ctx + self.ext_len, xf_width, xf_layers, xf_heads)
        self.final_ln = LayerNorm(xf_width) if xf_final_ln else None
        self.positional_embedding = nn.Parameter(torch.empty(1, text_ctx + self.ext_len, xf_width))
        self.prd_emb = nn.Parameter(torch.empty(1, 1, xf_width))
        nn.init.normal_(self.prd_emb, std=0.01)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, text_emb: torch.Tensor = None,
                text_enc: torch.Tensor = None, mask: torch.Tensor = None,
                causal_mask: torch.Tensor = None) -> torch.Tensor:
        """``x`` [B, clip_dim] noised image embeddings at ``timesteps`` [B]; ``text_emb`` [B, clip_dim]
        the projected text embeddings, ``text_enc`` [B, text_ctx, clip_dim] the text tokens,
        ``mask`` [B, text_ctx] (True for real tokens), ``causal_mask`` [1, n, n] additive."""
        batch = x.shape[0]
        t_emb = self.time_embed(timestep_embedding(timesteps, self.xf_width))
        tokens = torch.cat([
            self.text_enc_proj(text_enc),
            self.text_emb_proj(text_emb)[:, None],
            t_emb[:, None],
            self.clip_img_proj(x)[:, None],
            self.prd_emb.to(x.dtype).expand(batch, -1, -1),
        ], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        keep = F.pad(mask, (0, self.ext_len), value=True)  # the four extra positions are never masked
        key_mask = torch.zeros(keep.shape, dtype=tokens.dtype, device=keep.device).masked_fill(~keep, float("-inf"))
        out = self.transformer(tokens, mask=key_mask[:, None, :] + causal_mask.to(tokens.dtype))
        if self.final_ln is not None:
            out = self.final_ln(out)
        return self.out_proj(out[:, -1])
