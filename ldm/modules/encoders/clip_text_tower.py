"""CLIP's text transformer (Radford et al. 2021) written here, with the module names, state-dict keys
and outputs of transformers' ``CLIPTextModel`` as SD 1.x checkpoints store it: a ``text_model``
level, the persistent int64 ``embeddings.position_ids`` and k, v, q, out projections in that order.

Pre-LayerNorm blocks with a causal mask, QuickGELU (or GELU) MLPs and a final LayerNorm. Building it
does not import transformers' modeling code (about 2 s on a small CPU), so an SD 1.x checkpoint
loads and starts sooner; a local model directory still loads through transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.encoders.openclip import QuickGELU


@dataclass(frozen=True)
class ClipTextConfig:
    """The fields of transformers' ``CLIPTextConfig`` that shape the text model, same names."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    eos_token_id: int = 2
    projection_dim: int = 768


class ClipTextOutput(NamedTuple):
    """What ``CLIPTextModel`` returns, by the same names: the final states after the last LayerNorm,
    the end token's final state, and (when asked) the embeddings' and every layer's output."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None


_ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class ClipTextEmbeddings(nn.Module):
    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0),
                             persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, :input_ids.shape[-1]]
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class ClipAttention(nn.Module):
    """Multi-head self-attention with the causal mask (each token sees itself and those before)."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ClipMLP(nn.Module):
    def __init__(self, config: ClipTextConfig):
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported CLIP activation {config.hidden_act!r}: one of {', '.join(_ACTIVATIONS)}")
        self.activation = _ACTIVATIONS[config.hidden_act]()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """One pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.self_attn = ClipAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(config) for _ in range(config.num_hidden_layers))


class ClipTextTransformer(nn.Module):
    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = ClipTextEmbeddings(config)
        self.encoder = ClipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> ClipTextOutput:
        x = self.embeddings(input_ids)
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            states.append(x)
        last = self.final_layer_norm(x)
        pooled = last[torch.arange(last.shape[0], device=last.device), self._end_positions(input_ids)]
        return ClipTextOutput(last, pooled, tuple(states) if output_hidden_states else None)

    def _end_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Where the end token is. Configs with ``eos_token_id == 2`` (the OpenAI ones) take the
        highest id, as CLIP was trained (its end token is the last id of the vocabulary);
        others the first occurrence of their end token, as transformers does."""
        if self.config.eos_token_id == 2:
            return input_ids.argmax(dim=-1)
        return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)


class ClipTextModel(nn.Module):
    """``ClipTextModel(config)(input_ids=..., output_hidden_states=False)``: transformers'
    ``CLIPTextModel`` (4.x layout) in keys, submodule names and outputs."""

    def __init__(self, config: ClipTextConfig):
        super().__init__()
        self.text_model = ClipTextTransformer(config)

    @property
    def config(self) -> ClipTextConfig:
        return self.text_model.config

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> ClipTextOutput:
        return self.text_model(input_ids, output_hidden_states=output_hidden_states)
