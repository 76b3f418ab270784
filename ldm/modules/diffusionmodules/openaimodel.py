"""The diffusion UNet of latent diffusion / Stable Diffusion (Rombach et al. 2022), built on the
ADM UNet of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs", appendix A), with the original
constructor parameters and state-dict layout.

dtype policy (a deliberate deviation): the original casts the input to float16 inside ``forward``
when ``use_fp16`` is set, whatever the weights are, which fails on CPU. Here the UNet computes in
the dtype of its own weights (``.half()`` weights run in half, float32 weights in float32);
``use_fp16``/``use_bf16`` are accepted for config compatibility. As in the original, the output is
returned in the dtype of the input ``x``.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.attention import AttentionLayer, SpatialTransformer
from ldm.modules.diffusionmodules.util import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token (plus a learned positional embedding) attends
    over all pixels; returns its output vector."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads_channels: int,
                 output_dim: Optional[int] = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the timestep embedding ``emb``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequence that hands the timestep embedding to its TimestepBlocks and the cross-attention
    context to its SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context=None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class _Resample(nn.Module):
    """What the UNet's x2 resampling layers record: ``channels`` in, ``out_channels``, whether a
    convolution does the work (``use_conv``) and the data's ``dims``."""

    def __init__(self, channels: int, use_conv: bool, dims: int, out_channels: Optional[int]):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims

    def _check_channels(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects {self.channels} channels, got {x.shape[1]}")


class Upsample(_Resample):
    """Nearest-neighbour x2 upsampling (only the inner two axes for 3-D data), optionally followed
    by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: Optional[int] = None,
                 padding: int = 1):
        super().__init__(channels, use_conv, dims, out_channels)
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_channels(x)
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class TransposedUpsample(nn.Module):
    """Learned x2 upsampling with a transposed convolution."""

    def __init__(self, channels: int, out_channels: Optional[int] = None, ks: int = 5):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.up = nn.ConvTranspose2d(self.channels, self.out_channels, kernel_size=ks, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class Downsample(_Resample):
    """x2 downsampling (only the inner two axes for 3-D data) by a strided 3x3 convolution, or by
    average pooling when ``use_conv`` is False."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2, out_channels: Optional[int] = None,
                 padding: int = 1):
        super().__init__(channels, use_conv, dims, out_channels)
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=padding)
        else:
            if self.channels != self.out_channels:
                raise ValueError("Downsample without a convolution cannot change the channel count")
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_channels(x)
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, added to the features or, with
    ``use_scale_shift_norm``, applied as ``norm(h) * (1 + scale) + shift`` (FiLM, ADM appendix A).
    ``up``/``down`` resample inside the block; the skip path is identity, a 3x3 conv
    (``use_conv``) or a 1x1 conv when the channel count changes."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, dims: int = 2,
                 use_checkpoint: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False, dims), Upsample(channels, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False, dims), Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *((1,) * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions (the non-transformer UNets of the CompVis LDM
    configs): GroupNorm, 1x1 qkv projection, multi-head attention, zero-initialised projection out,
    residual. Gradient checkpointing follows ``use_checkpoint`` (the original always checkpoints;
    the gradients are the same)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"q,k,v channels {channels} is not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = (QKVAttention if use_new_attention_order else QKVAttentionLegacy)(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class _QKVAttentionBase(AttentionLayer):
    """Multi-head attention on a packed (batch, 3 * heads * ch, length) qkv tensor; subclasses say
    how q, k and v are laid out in it. Returns (batch, heads * ch, length)."""

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple:
        """q, k, v as (batch, heads, ch, length)."""
        raise NotImplementedError

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        q, k, v = self._split(qkv, width // (3 * self.n_heads))
        out = self.attend(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return out.transpose(-1, -2).reshape(bs, -1, length)


class QKVAttentionLegacy(_QKVAttentionBase):
    """Attention on a (batch, heads * 3 * ch, length) tensor laid out heads first, then q/k/v."""

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple:
        bs, _, length = qkv.shape
        return qkv.reshape(bs, self.n_heads, ch * 3, length).split(ch, dim=2)


class QKVAttention(_QKVAttentionBase):
    """Attention on a (batch, 3 * heads * ch, length) tensor laid out q/k/v first, then heads."""

    def _split(self, qkv: torch.Tensor, ch: int) -> tuple:
        bs, _, length = qkv.shape
        return qkv.reshape(bs, 3, self.n_heads, ch, length).unbind(dim=1)


class Timestep(nn.Module):
    """Sinusoidal embedding of timesteps as a module."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)


def attention_heads(ch: int, num_heads: int, num_head_channels: int, legacy: bool,
                    use_spatial_transformer: bool) -> tuple:
    """``(num_heads, dim_head)`` of an attention layer at width ``ch``, as the original derives
    them: a fixed head count, or a fixed head width; ``legacy`` configs use the old rule."""
    if num_head_channels == -1:
        dim_head = ch // num_heads
    else:
        num_heads = ch // num_head_channels
        dim_head = num_head_channels
    if legacy:
        dim_head = ch // num_heads if use_spatial_transformer else num_head_channels
    return num_heads, dim_head


def _per_level(value, name: str, length: int) -> list:
    """``value`` for each of ``length`` levels: a single value repeated, or a per-level list."""
    values = [value] * length if isinstance(value, int) else list(value)
    if len(values) != length:
        raise ValueError(f"provide {name} either as an int (globally constant) or as a list/tuple "
                         f"(per-level) with the same length as channel_mult ({length}), got {len(values)}")
    return values


def _label_embedding(num_classes, time_embed_dim: int, adm_in_channels: Optional[int]) -> nn.Module:
    """The class/ADM conditioning layer: an embedding table for ``num_classes`` classes, a linear map
    of one scalar (``"continuous"``), or an MLP of an ``adm_in_channels`` vector (``"sequential"``)."""
    if isinstance(num_classes, int):
        return nn.Embedding(num_classes, time_embed_dim)
    if num_classes == "continuous":
        return nn.Linear(1, time_embed_dim)
    if num_classes == "sequential":
        if adm_in_channels is None:
            raise ValueError("num_classes: sequential needs adm_in_channels (the width of the y vector)")
        return nn.Sequential(nn.Sequential(
            linear(adm_in_channels, time_embed_dim), nn.SiLU(), linear(time_embed_dim, time_embed_dim)))
    raise ValueError(f"num_classes must be an int, 'continuous' or 'sequential', got {num_classes!r}")


def _check_attention_config(use_spatial_transformer: bool, context_dim, num_heads: int,
                            num_head_channels: int) -> None:
    if use_spatial_transformer and context_dim is None:
        raise ValueError("use_spatial_transformer needs context_dim (the width of the cross-attention conditioning)")
    if context_dim is not None and not use_spatial_transformer:
        raise ValueError("context_dim is given but use_spatial_transformer is False; cross-attention "
                         "conditioning needs the spatial transformer")
    if num_heads == -1 and num_head_channels == -1:
        raise ValueError("set either num_heads or num_head_channels")


def _cast_context(context, dtype: torch.dtype):
    if isinstance(context, (list, tuple)):
        return [c.to(dtype) for c in context]
    return context.to(dtype) if context is not None else None


class UNetModel(nn.Module):
    """The full UNet with timestep embedding, optional class/ADM conditioning (``num_classes``) and
    attention (ADM self-attention, or spatial transformers with cross-attention to ``context``).

    Parameters are the original's. ``attention_resolutions`` are downsampling rates (1, 2, 4, ...)
    at which attention layers are added; ``num_res_blocks`` is one count or one per level;
    ``num_attention_blocks`` limits attention to the first n res blocks of each level;
    ``disable_self_attentions`` (per level) and ``disable_middle_self_attn`` turn the first attention
    of the transformer blocks into cross-attention; ``n_embed`` adds a codebook-id head. ``image_size``
    is unused; ``use_fp16``/``use_bf16`` have no effect (see the module docstring).
    """

    def __init__(self, image_size, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks, attention_resolutions, dropout: float = 0, channel_mult=(1, 2, 4, 8),
                 conv_resample: bool = True, dims: int = 2, num_classes=None, use_checkpoint: bool = False,
                 use_fp16: bool = False, use_bf16: bool = False, num_heads: int = -1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False, use_spatial_transformer: bool = False,
                 transformer_depth: int = 1, context_dim=None, n_embed: Optional[int] = None,
                 legacy: bool = True, disable_self_attentions=None, num_attention_blocks=None,
                 disable_middle_self_attn: bool = False, use_linear_in_transformer: bool = False,
                 adm_in_channels: Optional[int] = None):
        super().__init__()
        _check_attention_config(use_spatial_transformer, context_dim, num_heads, num_head_channels)
        levels = len(channel_mult)
        self.image_size = image_size
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.channel_mult = tuple(channel_mult)
        self.num_res_blocks = _per_level(num_res_blocks, "num_res_blocks", levels)
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.conv_resample = conv_resample
        self.dims = dims
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.num_heads, self.num_head_channels = num_heads, num_head_channels
        self.num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resblock_updown = resblock_updown
        self.use_new_attention_order = use_new_attention_order
        self.use_spatial_transformer = use_spatial_transformer
        self.transformer_depth = transformer_depth
        self.context_dim = context_dim if context_dim is None or isinstance(context_dim, int) else list(context_dim)
        self.legacy = legacy
        self.disable_self_attentions = (None if disable_self_attentions is None else
                                        _per_level(disable_self_attentions, "disable_self_attentions", levels))
        self.num_attention_blocks = (None if num_attention_blocks is None else
                                     _per_level(num_attention_blocks, "num_attention_blocks", levels))
        if self.num_attention_blocks is not None and any(
                n > r for n, r in zip(self.num_attention_blocks, self.num_res_blocks)):
            raise ValueError(f"num_attention_blocks {self.num_attention_blocks} exceeds num_res_blocks "
                             f"{self.num_res_blocks} at some level")
        self.disable_middle_self_attn = disable_middle_self_attn
        self.use_linear_in_transformer = use_linear_in_transformer
        self.predict_codebook_ids = n_embed is not None
        self.time_embed_dim = model_channels * 4

        self.time_embed = nn.Sequential(
            linear(model_channels, self.time_embed_dim), nn.SiLU(), linear(self.time_embed_dim, self.time_embed_dim))
        if num_classes is not None:
            self.label_emb = _label_embedding(num_classes, self.time_embed_dim, adm_in_channels)
        self.input_blocks, skip_channels, ch, ds = self._build_input_blocks()
        self.middle_block = TimestepEmbedSequential(
            self._res_block(ch),
            self._attention(ch, self.num_heads, disable_middle_self_attn),
            self._res_block(ch))
        self.output_blocks, ch = self._build_output_blocks(skip_channels, ch, ds)
        self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                 zero_module(conv_nd(dims, ch, out_channels, 3, padding=1)))
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(normalization(ch), conv_nd(dims, ch, n_embed, 1))
        # A DeepCache while sampling with feature caching (deepcache.deep_cache), else None.
        self.feature_cache = None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet computes in: that of its weights."""
        return self.time_embed[0].weight.dtype

    def _res_block(self, channels: int, out_channels: Optional[int] = None, up: bool = False,
                   down: bool = False) -> ResBlock:
        return ResBlock(channels, self.time_embed_dim, self.dropout, out_channels=out_channels, dims=self.dims,
                        use_checkpoint=self.use_checkpoint, use_scale_shift_norm=self.use_scale_shift_norm,
                        up=up, down=down)

    def _has_attention(self, ds: int, level: int, index: int) -> bool:
        return ds in self.attention_resolutions and (
            self.num_attention_blocks is None or index < self.num_attention_blocks[level])

    def _self_attention_disabled(self, level: int) -> bool:
        return bool(self.disable_self_attentions[level]) if self.disable_self_attentions is not None else False

    def _attention(self, ch: int, block_num_heads: int, disable_self_attn: bool) -> nn.Module:
        num_heads, dim_head = attention_heads(ch, self.num_heads, self.num_head_channels, self.legacy,
                                              self.use_spatial_transformer)
        if not self.use_spatial_transformer:
            return AttentionBlock(ch, use_checkpoint=self.use_checkpoint, num_heads=block_num_heads,
                                  num_head_channels=dim_head, use_new_attention_order=self.use_new_attention_order)
        return SpatialTransformer(ch, num_heads, dim_head, depth=self.transformer_depth, context_dim=self.context_dim,
                                  disable_self_attn=disable_self_attn, use_linear=self.use_linear_in_transformer,
                                  use_checkpoint=self.use_checkpoint)

    def _resample(self, ch: int, up: bool) -> nn.Module:
        if self.resblock_updown:
            return self._res_block(ch, ch, up=up, down=not up)
        if up:
            return Upsample(ch, self.conv_resample, dims=self.dims, out_channels=ch)
        return Downsample(ch, self.conv_resample, dims=self.dims, out_channels=ch)

    def _build_input_blocks(self):
        """Encoder half: returns the blocks, the channel count of each block's output (the skip
        connections), and the final width and downsampling rate."""
        ch = self.model_channels
        blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(self.dims, self.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(self.channel_mult):
            for index in range(self.num_res_blocks[level]):
                layers = [self._res_block(ch, mult * self.model_channels)]
                ch = mult * self.model_channels
                if self._has_attention(ds, level, index):
                    layers.append(self._attention(ch, self.num_heads, self._self_attention_disabled(level)))
                blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(self._resample(ch, up=False)))
                skip_channels.append(ch)
                ds *= 2
        return blocks, skip_channels, ch, ds

    def _build_output_blocks(self, skip_channels: list, ch: int, ds: int):
        """Decoder half: one more block per level than the encoder, each taking a skip connection;
        the last block of every level but the first upsamples."""
        skip_channels = list(skip_channels)
        blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for index in range(self.num_res_blocks[level] + 1):
                layers = [self._res_block(ch + skip_channels.pop(), self.model_channels * mult)]
                ch = self.model_channels * mult
                if self._has_attention(ds, level, index):
                    layers.append(self._attention(ch, self.num_heads_upsample, self._self_attention_disabled(level)))
                if level and index == self.num_res_blocks[level]:
                    layers.append(self._resample(ch, up=True))
                    ds //= 2
                blocks.append(TimestepEmbedSequential(*layers))
        return blocks, ch

    def forward(self, x: torch.Tensor, timesteps: Optional[torch.Tensor] = None, context=None,
                y: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """Predict from ``x`` (b, in_channels, ...) at ``timesteps`` (b,), given the cross-attention
        ``context`` (b, tokens, context_dim) and, for class-conditional models, ``y`` (labels, or
        the ADM vector). Returns (b, out_channels, ...) in the dtype of ``x``."""
        if timesteps is None:
            raise ValueError("UNetModel.forward needs timesteps")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("must specify y if and only if the model is class-conditional "
                             f"(num_classes={self.num_classes!r})")
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if self.num_classes is not None:
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"y has batch size {y.shape[0]} but x has {x.shape[0]}")
            emb = emb + self.label_emb(y if not torch.is_floating_point(y) else y.to(dtype))
        context = _cast_context(context, dtype)
        h = x.to(dtype)
        if self.feature_cache is not None:
            h = self.feature_cache.run_blocks(self, h, emb, context, timesteps)
        else:
            skips = []
            for module in self.input_blocks:
                h = module(h, emb, context)
                skips.append(h)
            h = self.middle_block(h, emb, context)
            for module in self.output_blocks:
                h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
        head = self.id_predictor if self.predict_codebook_ids else self.out
        return head(h).to(x.dtype)
