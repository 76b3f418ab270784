"""A transformer encoder with the module names of the LDM code's ``x_transformer`` (after
lucidrains' x-transformers), so that LDM text-to-image checkpoints (``BERTEmbedder``) load:
``token_emb``, ``pos_emb.emb``, ``attn_layers.layers.N.{0: norm, 1: Attention/FeedForward,
2: Residual}``, ``norm``, ``to_logits``.

Only the options the LDM models use are supported (pre- or post-norm, self/cross attention,
causal masking, GEGLU feed-forward); others raise instead of being silently ignored.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.attention import GEGLU, FeedForward  # noqa: F401  (same layers, same keys)

DEFAULT_DIM_HEAD = 64


class AbsolutePositionalEmbedding(nn.Module):
    """A learned embedding of positions 0..n-1."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(torch.arange(x.shape[1], device=x.device))[None]


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1); masked positions get
    the most negative finite score, as the original does."""

    def __init__(self, dim: int, dim_head: int = DEFAULT_DIM_HEAD, heads: int = 8, causal: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads, self.causal = heads, causal
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        kv = x if context is None else context
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(kv), self.to_v(kv)))
        bias = self._score_bias(x, kv, context is not None, mask, context_mask, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout.p if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).flatten(2))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _score_bias(self, x, kv, cross: bool, mask, context_mask, dtype) -> Optional[torch.Tensor]:
        """Additive bias [b|1, 1, i, j]: 0 where attention is allowed, -max elsewhere."""
        b, i, j = x.shape[0], x.shape[1], kv.shape[1]
        allowed = None
        if mask is not None or context_mask is not None:
            q_mask = mask if mask is not None else torch.ones(b, i, dtype=torch.bool, device=x.device)
            k_mask = context_mask if cross else q_mask
            k_mask = k_mask if k_mask is not None else torch.ones(b, j, dtype=torch.bool, device=x.device)
            allowed = q_mask.bool()[:, None, :, None] & k_mask.bool()[:, None, None, :]
        if self.causal:
            causal = torch.ones(i, j, dtype=torch.bool, device=x.device).tril(j - i)
            allowed = causal[None, None] if allowed is None else allowed & causal
        if allowed is None:
            return None
        return torch.zeros(allowed.shape, dtype=dtype, device=x.device).masked_fill(~allowed, -torch.finfo(dtype).max)


class Residual(nn.Module):
    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual


class AttentionLayers(nn.Module):
    """``depth`` repetitions of (self-attention, [cross-attention,] feed-forward), each wrapped as
    ``[LayerNorm, block, Residual]``; ``attn_*``/``ff_*`` keywords go to the blocks."""

    def __init__(self, dim: int, depth: int, heads: int = 8, causal: bool = False, cross_attend: bool = False,
                 only_cross: bool = False, pre_norm: bool = True, **kwargs):
        super().__init__()
        attn_kwargs = _take_prefixed(kwargs, "attn_")
        ff_kwargs = _take_prefixed(kwargs, "ff_")
        if kwargs:
            raise TypeError(f"x_transformer options not supported here: {', '.join(sorted(kwargs))}")
        self.dim, self.depth, self.pre_norm = dim, depth, pre_norm
        self.has_pos_emb = False
        block = ("c", "f") if cross_attend and only_cross else ("a", "c", "f") if cross_attend else ("a", "f")
        self.layer_types = block * depth
        self.layers = nn.ModuleList()
        for kind in self.layer_types:
            if kind == "f":
                layer = FeedForward(dim, **ff_kwargs)
            else:
                layer = Attention(dim, heads=heads, causal=causal and kind == "a", **attn_kwargs)
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), layer, Residual()]))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, (kind, (norm, block, residual_fn)) in enumerate(zip(self.layer_types, self.layers)):
            residual = x
            if self.pre_norm:
                x = norm(x)
            if kind == "a":
                out = block(x, mask=mask)
            elif kind == "c":
                out = block(x, context=context, mask=mask, context_mask=context_mask)
            else:
                out = block(x)
            x = residual_fn(out, residual)
            if not self.pre_norm and index != last:
                x = norm(x)
        return x


def _take_prefixed(kwargs: dict, prefix: str) -> dict:
    keys = [k for k in kwargs if k.startswith(prefix)]
    return {k[len(prefix):]: kwargs.pop(k) for k in keys}


class Encoder(AttentionLayers):
    """Bidirectional attention layers."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("an Encoder cannot be causal; use Decoder")
        super().__init__(causal=False, **kwargs)


class Decoder(AttentionLayers):
    """Causal attention layers."""

    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise TypeError("a Decoder is always causal")
        super().__init__(causal=True, **kwargs)


class TransformerWrapper(nn.Module):
    """Token + position embedding, attention layers, final LayerNorm, and a projection to token
    logits (or the embeddings themselves with ``return_embeddings=True``)."""

    def __init__(self, *, num_tokens: int, max_seq_len: int, attn_layers: AttentionLayers,
                 emb_dim: Optional[int] = None, emb_dropout: float = 0.0, tie_embedding: bool = False,
                 use_pos_emb: bool = True):
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError("attn_layers must be an Encoder or Decoder")
        dim = attn_layers.dim
        emb_dim = emb_dim or dim
        self.max_seq_len, self.num_tokens = max_seq_len, num_tokens
        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(emb_dim, max_seq_len) if use_pos_emb else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.tie_embedding = tie_embedding
        self.to_logits = None if tie_embedding else nn.Linear(dim, num_tokens)

    def forward(self, x: torch.Tensor, return_embeddings: bool = False, mask: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        if x.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence of {x.shape[1]} tokens is longer than max_seq_len {self.max_seq_len}")
        h = self.token_emb(x)
        if self.pos_emb is not None:
            h = h + self.pos_emb(h)
        h = self.project_emb(self.emb_dropout(h))
        h = self.norm(self.attn_layers(h, mask=mask, **kwargs))
        if return_embeddings:
            return h
        return h @ self.token_emb.weight.t() if self.tie_embedding else self.to_logits(h)

