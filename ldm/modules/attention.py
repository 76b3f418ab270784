"""Attention layers of the latent-diffusion UNet: cross-attention, the transformer block and the
spatial transformer that conditions the UNet on text (Rombach et al. 2022, sec. 3.3).

Every softmax attention here goes through :func:`scaled_dot_product`, i.e. torch's
``scaled_dot_product_attention``. Each attention layer (an :class:`AttentionLayer`) carries two
settings of its own, so that one model's settings never change another's:

* ``attention_precision``, initialised from the ``ATTN_PRECISION`` environment variable when the
  layer is built (the original's switch), changed for a whole model with
  :func:`set_attention_precision`: ``"fp32"`` (default, as the original) computes q·kᵀ and the
  softmax of half/bfloat16 inputs in float32, so that the scores cannot overflow; ``"fp16"`` lets
  them be computed in the input dtype. Where torch's SDPA already works in float32 (see
  :func:`sdpa_scores_in_float32`) nothing is upcast: the fused kernels then run at half precision
  speed, with the original's numerics (float32 scores and softmax, the probabilities times v in
  half precision, as its autocast einsum did);
* ``attention_slice_size`` (:func:`set_attention_slicing`, off by default): computes attention a
  chunk of query rows at a time, which caps the memory of the attention matrix and gives the same
  numbers.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.diffusionmodules.util import checkpoint, zero_module
from ldm.util import default, exists

_PRECISIONS = ("fp32", "fp16")


def _checked_precision(value: str, source: str) -> str:
    if value not in _PRECISIONS:
        raise ValueError(f"{source} must be 'fp32' or 'fp16', got {value!r}")
    return value


def _checked_slice_size(slice_size: Optional[int]) -> Optional[int]:
    if slice_size is not None and (isinstance(slice_size, bool) or not isinstance(slice_size, int)
                                   or slice_size < 1):
        raise ValueError(f"attention slice size must be a positive integer or None, got {slice_size!r}")
    return slice_size


def attention_precision_from_environment() -> str:
    """The ``ATTN_PRECISION`` environment variable (the original's switch): ``"fp32"`` (default) or
    ``"fp16"``."""
    return _checked_precision(os.environ.get("ATTN_PRECISION", "fp32"), "ATTN_PRECISION")


def _sliced_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                      scale: Optional[float], step: Optional[int]) -> torch.Tensor:
    rows = q.shape[-2]
    if step is None or step >= rows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for start in range(0, rows, step):
        out[..., start:start + step, :] = F.scaled_dot_product_attention(
            q[..., start:start + step, :], k, v, attn_mask=mask, scale=scale)
    return out


def sdpa_scores_in_float32(device: torch.device) -> bool:
    """Whether ``scaled_dot_product_attention`` computes the scores and softmax of float16/bfloat16
    inputs in float32 on ``device`` by itself. On CPU and CUDA the fused kernels (flash, memory-
    efficient, cuDNN) accumulate q·kᵀ in float32, and the math fallback upcasts half inputs unless
    ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)`` was called; on other devices
    (MPS, ...) this is not known, so the caller upcasts."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    return False


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                       precision: str = "fp32", slice_size: Optional[int] = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` (Vaswani et al. 2017, eq. 1) over ``(batch, heads, tokens, dim)``
    tensors; ``scale`` defaults to ``dim ** -0.5``, a boolean ``mask`` is True where a key may be
    attended. ``precision`` and ``slice_size`` as the settings of :class:`AttentionLayer`; returns
    the dtype of ``q``."""
    dtype = q.dtype
    if precision == "fp32" and dtype in (torch.float16, torch.bfloat16) and not sdpa_scores_in_float32(q.device):
        device_type = q.device.type
        no_autocast = (torch.autocast(device_type, enabled=False)
                       if torch.is_autocast_enabled(device_type) else contextlib.nullcontext())
        with no_autocast:
            out = _sliced_attention(q.float(), k.float(), v.float(), mask, scale, slice_size)
        return out.to(dtype)
    return _sliced_attention(q, k, v, mask, scale, slice_size)


class AttentionLayer(nn.Module):
    """Base of the layers that attend through :func:`scaled_dot_product` with settings of their
    own: ``attention_precision`` (from ``ATTN_PRECISION`` when built) and ``attention_slice_size``
    (None: all query rows at once). Registers no parameters."""

    def __init__(self):
        super().__init__()
        self.attention_precision = attention_precision_from_environment()
        self.attention_slice_size: Optional[int] = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
               scale: Optional[float] = None) -> torch.Tensor:
        """:func:`scaled_dot_product` with this layer's settings."""
        return scaled_dot_product(q, k, v, mask=mask, scale=scale, precision=self.attention_precision,
                                  slice_size=self.attention_slice_size)


def attention_layers(model: nn.Module) -> Iterator[AttentionLayer]:
    """The attention layers of ``model`` (the model itself included)."""
    return (module for module in model.modules() if isinstance(module, AttentionLayer))


def _common_setting(model: nn.Module, name: str):
    values = {getattr(layer, name) for layer in attention_layers(model)}
    if len(values) > 1:
        raise ValueError(f"the attention layers of this model differ in {name}: {sorted(map(str, values))}")
    return values.pop() if values else None


def _set_on_layers(model: nn.Module, name: str, value) -> int:
    layers = list(attention_layers(model))
    for layer in layers:
        setattr(layer, name, value)
    return len(layers)


def set_attention_precision(model: nn.Module, precision: str) -> int:
    """Choose how the attention layers of ``model`` compute scores for half inputs: ``"fp32"`` in
    float32 (the original's default; avoids fp16 overflow NaNs; q, k, v are upcast only where SDPA
    would not do it itself), ``"fp16"`` in whatever precision SDPA uses for the input dtype.
    Other models are not affected. Returns the number of layers set."""
    return _set_on_layers(model, "attention_precision", _checked_precision(precision, "attention precision"))


def get_attention_precision(model: nn.Module) -> Optional[str]:
    """The attention precision of ``model``'s attention layers (None when it has none)."""
    return _common_setting(model, "attention_precision")


def set_attention_slicing(model: nn.Module, slice_size: Optional[int]) -> int:
    """Make the attention layers of ``model`` compute ``slice_size`` query rows at a time (None:
    all at once). Slicing bounds the memory of the (rows x keys) score matrix at no change to the
    result. Other models are not affected. Returns the number of layers set."""
    return _set_on_layers(model, "attention_slice_size", _checked_slice_size(slice_size))


def get_attention_slicing(model: nn.Module) -> Optional[int]:
    """The attention slice size of ``model``'s attention layers (None when slicing is off)."""
    return _common_setting(model, "attention_slice_size")


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, the normalisation of the transformer's input."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class GEGLU(nn.Module):
    """Gated GELU projection: ``a * gelu(b)`` where ``[a, b] = proj(x)`` (Shazeer 2020, eq. 6)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """The transformer's MLP: ``Linear(GEGLU or Linear+GELU) -> Dropout -> Linear``, hidden width
    ``mult * dim``."""

    def __init__(self, dim: int, dim_out: Optional[int] = None, mult: int = 4, glu: bool = False,
                 dropout: float = 0.):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(AttentionLayer):
    """Multi-head attention of ``x`` (queries) over ``context`` (keys and values; ``x`` itself when
    None), with bias-free q/k/v projections and an output projection, scale ``dim_head ** -0.5``."""

    def __init__(self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: (b, n, query_dim); ``context``: (b, m, context_dim); ``mask``: (b, ...) booleans
        over the m context tokens, True where attention is allowed."""
        context = default(context, x)
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        if exists(mask):
            mask = mask.reshape(mask.shape[0], 1, 1, -1).to(torch.bool)
        out = self.attend(q, k, v, mask=mask, scale=self.scale)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class MemoryEfficientCrossAttention(CrossAttention):
    """The original's xformers variant, kept for code that names it: same parameters, keys and
    results as :class:`CrossAttention` (torch's fused attention already is memory-efficient)."""


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention (cross-attention to the context when
    ``disable_self_attn``), cross-attention to the context, gated feed-forward; each residual."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.,
                 context_dim: Optional[int] = None, gated_ff: bool = True, checkpoint: bool = True,
                 disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head, dropout=dropout,
                                    context_dim=context_dim if disable_self_attn else None)
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads,
                                    dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint
        # A TokenMerging while sampling with token merging (token_merging.token_merging), else None.
        self.token_merging = None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self._first_attention(x, context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x

    def _first_attention(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        """``attn1`` of the normed ``x``; with token merging on, of its merged tokens, unmerged after."""
        merge = self.token_merging.plan(x) if self.token_merging is not None else None
        if merge is None:
            return self.attn1(self.norm1(x), context=context)
        return merge.unmerge(self.attn1(merge.merge(self.norm1(x)), context=context))


def _context_dims_per_block(context_dim, depth: int) -> list:
    if context_dim is None or isinstance(context_dim, int):
        return [context_dim] * depth
    dims = list(context_dim)
    if len(dims) != depth:
        raise ValueError(f"SpatialTransformer got {len(dims)} context_dim values for depth {depth}; "
                         "give one value, or one per transformer block")
    return dims


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of an image feature map: GroupNorm, project in (1x1 conv, or
    linear with ``use_linear``), ``depth`` transformer blocks, zero-initialised projection out,
    residual to the input. ``context_dim`` is one width or one per block."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1,
                 dropout: float = 0., context_dim: Union[None, int, Sequence[int]] = None,
                 disable_self_attn: bool = False, use_linear: bool = False,
                 use_checkpoint: bool = True):
        super().__init__()
        context_dims = _context_dims_per_block(context_dim, depth)
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels)
        self.use_linear = use_linear
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dims[d],
                                  disable_self_attn=disable_self_attn, checkpoint=use_checkpoint)
            for d in range(depth)])
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        """``x``: (b, c, h, w); ``context``: a tensor for every block, or a list with one per block."""
        contexts = context if isinstance(context, (list, tuple)) else [context] * len(self.transformer_blocks)
        b, _, height, width = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, height * width, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for block, block_context in zip(self.transformer_blocks, contexts):
            x = block(x, context=block_context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, height, width, -1).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class SpatialSelfAttention(AttentionLayer):
    """Single-head self-attention over the pixels of a feature map with 1x1-conv projections and
    a residual connection."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)

        def as_tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, 1, c, height * width).transpose(-1, -2)

        h = self.attend(as_tokens(self.q(h)), as_tokens(self.k(h)), as_tokens(self.v(h)))
        h = h.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj_out(h)


class LinearAttention(nn.Module):
    """Linear attention (Shen et al. 2021, "Efficient Attention"): keys softmax-normalised over
    positions, ``out = q · (softmax(k) vᵀ)``, cost linear in the number of pixels."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        qkv = self.to_qkv(x).reshape(b, 3, self.heads, -1, height * width)
        q, k, v = qkv.unbind(dim=1)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, height, width))
