"""Conditioning encoders, under the class paths the original configs name.

Text encoders build with no network: a hub name selects a built-in architecture, the weights come
from the checkpoint, and the CLIP vocabulary ships with the package (``data/``).

* SD 1.x: :class:`FrozenCLIPEmbedder` (transformers' CLIP text model, SD 1.x checkpoint layout).
* SD 2.x: :class:`FrozenOpenCLIPEmbedder` (open_clip when it imports, else our own tower).
* unCLIP: :class:`FrozenOpenCLIPImageEmbedder`, :class:`ClipImageEmbedder`,
  :class:`CLIPEmbeddingNoiseAugmentation`.
* LDM: :class:`ClassEmbedder`, :class:`SpatialRescaler`, :class:`BERTEmbedder`,
  :class:`TransformerEmbedder`, :class:`BERTTokenizer`; also T5 encoders from local directories.

Prompts over the encoder's length are cut as the original does, with one warning per prompt
naming how many tokens were dropped; ``chunk_long_prompts=True`` instead encodes them in windows of
``max_length - 2`` tokens and concatenates the windows along the token axis.
"""
from __future__ import annotations

import os
import warnings
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from einops import repeat

from ldm.modules.encoders.base import AbstractEncoder, IdentityEncoder, disabled_train
from ldm.modules.encoders.clip_text import build_text_model_and_tokenizer, load_offline, load_tokenizer_offline
from ldm.modules.encoders.image_embedders import ClipImageEmbedder, FrozenClipImageEmbedder, FrozenOpenCLIPImageEmbedder
from ldm.modules.encoders.openclip import CLIP, create_openclip_model, openai_arch, run_blocks
from ldm.modules.encoders.tokenizer import (
    ClipTokenIds,
    OpenCLIPTokenizer,
    Prompts,
    TruncationNotice,
    as_prompt_list,
    build_clip_tokenizer,
    pack_rows,
    split_into_windows,
)
from ldm.modules.x_transformer import Encoder, TransformerWrapper

__all__ = [
    "AbstractEncoder", "IdentityEncoder", "disabled_train", "ClassEmbedder", "FrozenT5Embedder",
    "FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "FrozenCLIPT5Encoder", "FrozenCLIPTextEmbedder",
    "ClipImageEmbedder", "FrozenClipImageEmbedder", "FrozenOpenCLIPImageEmbedder",
    "CLIPEmbeddingNoiseAugmentation", "TransformerEmbedder", "BERTTokenizer", "BERTEmbedder", "SpatialRescaler",
]


def __getattr__(name: str):
    # The unCLIP noise augmentor subclasses the x4 upscaler's; import it only when asked for.
    if name == "CLIPEmbeddingNoiseAugmentation":
        from ldm.modules.encoders.noise_augmentation import CLIPEmbeddingNoiseAugmentation
        return CLIPEmbeddingNoiseAugmentation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_max_length(max_length: int, positions: int) -> None:
    if not 2 < max_length <= positions:
        raise ValueError(f"max_length must be in [3, {positions}] (the text encoder's positions), got {max_length}")


def _rows_to_prompts(z: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """[prompts * windows, tokens, dim] -> [prompts, windows * tokens, dim]."""
    return z.reshape(n_prompts, -1, z.shape[-1])


class ClassEmbedder(nn.Module):
    """Class label -> [B, 1, embed_dim]. For classifier-free guidance training, labels are replaced
    by the "no class" label ``n_classes - 1`` with probability ``ucg_rate`` -- in training mode only,
    so that sampling (eval mode) always sees the requested class."""

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class", ucg_rate: float = 0.1):
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes, embed_dim)
        self.n_classes = n_classes
        self.ucg_rate = ucg_rate

    def forward(self, batch: Dict[str, torch.Tensor], key: Optional[str] = None,
                disable_dropout: bool = False) -> torch.Tensor:
        c = batch[key or self.key][:, None]
        if self.ucg_rate > 0.0 and self.training and not disable_dropout:
            drop = torch.bernoulli(torch.full(c.shape, float(self.ucg_rate), device=c.device)).bool()
            c = torch.where(drop, torch.full_like(c, self.n_classes - 1), c)
        return self.embedding(c.long())

    def get_unconditional_conditioning(self, bs: int, device=None) -> Dict[str, torch.Tensor]:
        """The "no class" label for a batch of ``bs``."""
        device = device if device is not None else self.embedding.weight.device
        return {self.key: torch.full((bs,), self.n_classes - 1, dtype=torch.long, device=device)}


class _PromptEncoder(AbstractEncoder):
    """What the SD text encoders share: prompts over ``max_length - 2`` tokens are cut with a notice
    naming what was dropped, or (``chunk_long_prompts``) encoded in windows of ``max_length - 2``
    tokens that are concatenated along the token axis. Subclasses say how text becomes token ids
    (``_content_ids``), rows (``_cut_rows``, ``_window_rows``) and features (``_encode_rows``).

    ``added_tokens``: the textual-inversion embeddings loaded into the encoder (see
    :mod:`ldm.modules.encoders.textual_inversion`), whose tokens in a prompt become their vectors."""

    added_tokens = None

    def _init_prompts(self, device, max_length: int, chunk_long_prompts: bool, weights_from: Optional[str]) -> None:
        """``weights_from``: where the encoder's weights came from, or None when it was built with
        random ones (a hub name: the checkpoint brings them); see :meth:`_warn_if_random`."""
        self.device = device
        self.weights_from = weights_from
        self.max_length = max_length
        self.chunk_long_prompts = chunk_long_prompts
        self.truncation = TruncationNotice(max_length - 2)

    def _content_ids(self, prompts: List[str]) -> List[List[int]]:
        """Each prompt's token ids without start and end tokens."""
        raise NotImplementedError

    def _cut_rows(self, prompts: List[str], content: List[List[int]]) -> torch.Tensor:
        """One padded row per prompt, cut to ``max_length``."""
        raise NotImplementedError

    def _window_rows(self, windows: List[List[int]]) -> torch.Tensor:
        """One padded row per window of content tokens."""
        raise NotImplementedError

    def _encode_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokenize(self, text: Prompts) -> Tuple[torch.Tensor, int]:
        """(token rows [prompts * windows, max_length], windows per prompt)."""
        prompts = as_prompt_list(text)
        content = self._prompt_content_ids(prompts)
        if self.chunk_long_prompts:
            windows = split_into_windows(content, self.max_length - 2)
            return self._window_rows([w for per_prompt in windows for w in per_prompt]), len(windows[0])
        self.truncation.check(prompts, content)
        return self._cut_rows(prompts, content), 1

    def _prompt_content_ids(self, prompts: List[str]) -> List[List[int]]:
        """:meth:`_content_ids`, with the ids of the added tokens' vectors where a prompt names one."""
        if self.added_tokens is None:
            return self._content_ids(prompts)
        return self.added_tokens.content_ids(prompts, self._content_ids)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.weights_from is None and any(key.startswith(prefix) for key in state_dict):
            self.weights_from = "a state dict"

    def _warn_if_random(self) -> None:
        """Say once per encoder that it encodes with random weights: a hub name was given as
        ``version`` (nothing is downloaded) and no checkpoint brought the weights; a frozen
        encoder will not learn them either."""
        if self.weights_from is None and not getattr(self, "_said_random", False):
            self._said_random = True
            frozen = "; it is frozen, so it will not learn" if not any(p.requires_grad for p in self.parameters()) \
                else ""
            warnings.warn(f"{type(self).__name__} encodes with random weights: no local weights for "
                          f"{self.version!r} and no checkpoint brought them (nothing is downloaded; pass a local "
                          f"model directory as version){frozen}", stacklevel=3)

    def forward(self, text: Prompts) -> torch.Tensor:
        self._warn_if_random()
        tokens, _ = self.tokenize(text)
        z = self._encode_rows(tokens.to(self.device))
        return _rows_to_prompts(z, len(as_prompt_list(text)))

    def encode(self, text: Prompts) -> torch.Tensor:
        return self(text)


class FrozenCLIPEmbedder(_PromptEncoder):
    """SD 1.x text encoder: the CLIP text model (ViT-L/14 by default) and its ``CLIPTokenizer``
    (start/end tokens, padded with ``<|endoftext|>`` to ``max_length``).

    ``version``: a known hub name (built-in architecture in our own text model with transformers'
    ``CLIPTextModel`` layout and outputs, weights from the checkpoint, nothing downloaded) or a
    local model directory (loaded into transformers' ``CLIPTextModel``). ``layer``: "last" (after
    the final LayerNorm, [B, 77, 768]), "pooled" (the end token's state, [B, 1, 768]) or "hidden"
    (``hidden_states[layer_idx]``, without the final LayerNorm).
    """

    LAYERS = ["last", "pooled", "hidden"]

    def __init__(self, version: str = "openai/clip-vit-large-patch14", device=None, max_length: int = 77,
                 freeze: bool = True, layer: str = "last", layer_idx: Optional[int] = None,
                 chunk_long_prompts: bool = False):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        self.transformer, self._tokenizer = build_text_model_and_tokenizer(version)
        # A known hub name tokenizes with the shipped vocabulary without importing transformers.
        self._token_ids = ClipTokenIds() if self._tokenizer is None else None
        config = self.transformer.config
        if layer == "hidden" and (layer_idx is None or abs(layer_idx) > config.num_hidden_layers):
            raise ValueError(f"layer='hidden' needs layer_idx in [-{config.num_hidden_layers}, "
                             f"{config.num_hidden_layers}], got {layer_idx}")
        _check_max_length(max_length, config.max_position_embeddings)
        self.version = version
        self._init_prompts(device, max_length, chunk_long_prompts, version if os.path.isdir(version) else None)
        self.layer, self.layer_idx = layer, layer_idx
        if freeze:
            self.freeze()

    @property
    def tokenizer(self):
        """transformers' ``CLIPTokenizer``: the local directory's, or for a known hub name one over the
        shipped vocabulary, built when first asked for (prompts are tokenized to the same ids without
        it until then; once built, prompts go through it, changes included)."""
        if self._tokenizer is None:
            self._tokenizer = build_clip_tokenizer(self.max_length)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def _content_ids(self, prompts: List[str]) -> List[List[int]]:
        if self._tokenizer is None:
            return self._token_ids.content_ids(prompts)
        return self._tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]

    def _window_rows(self, windows: List[List[int]]) -> torch.Tensor:
        tok = self._token_ids if self._tokenizer is None else self._tokenizer
        return pack_rows(windows, self.max_length, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)

    def _cut_rows(self, prompts: List[str], content: List[List[int]]) -> torch.Tensor:
        return self._window_rows(content)  # start, content cut to max_length - 2, end, padding: the tokenizer's rows

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs = self.transformer(input_ids=tokens, output_hidden_states=self.layer == "hidden")
        if self.layer == "last":
            return outputs.last_hidden_state
        if self.layer == "pooled":
            return outputs.pooler_output[:, None, :]
        return outputs.hidden_states[self.layer_idx]

    def _encode_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_tokens(tokens)


class FrozenOpenCLIPEmbedder(_PromptEncoder):
    """SD 2.x text encoder: the OpenCLIP text tower (ViT-H-14 by default), tokenized as
    ``open_clip.tokenize`` does (zero padding). "last" runs every block, "penultimate" all but the
    last; ``ln_final`` is applied in both cases, as the original does. [B, 77, width].

    ``version`` names the pretrained weights only to pick the activation (``"openai"`` weights use
    QuickGELU, as in open_clip); the weights themselves come from the checkpoint. Set the
    environment variable ``LDM_NATIVE_CLIP=1`` to use our tower even where open_clip imports.
    ``arch_overrides`` (ours) resizes the tower for tests (see ``openclip.resized_arch``)."""

    LAYERS = ["last", "penultimate"]

    def __init__(self, arch: str = "ViT-H-14", version: str = "laion2b_s32b_b79k", device=None,
                 max_length: int = 77, freeze: bool = True, layer: str = "last", chunk_long_prompts: bool = False,
                 arch_overrides: Optional[Mapping[str, Any]] = None):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"layer must be one of {self.LAYERS}, got {layer!r}")
        self.model = create_openclip_model(arch, version, with_visual=False, with_text_transformer=True,
                                           arch_overrides=arch_overrides)
        _check_max_length(max_length, self.model.positional_embedding.shape[0])
        self.tokenizer = OpenCLIPTokenizer(max_length)
        self.version = version
        self._init_prompts(device, max_length, chunk_long_prompts, None)
        self.layer = layer
        self.layer_idx = self.LAYERS.index(layer)
        if freeze:
            self.freeze()

    def _content_ids(self, prompts: List[str]) -> List[List[int]]:
        return self.tokenizer.encode(prompts)

    def _window_rows(self, windows: List[List[int]]) -> torch.Tensor:
        return self.tokenizer.pack(windows)

    def _cut_rows(self, prompts: List[str], content: List[List[int]]) -> torch.Tensor:
        return self.tokenizer.pack(content)

    def _encode_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_with_transformer(tokens)

    def encode_with_transformer(self, text: torch.Tensor) -> torch.Tensor:
        n = text.shape[1]
        x = self.model.token_embedding(text) + self.model.positional_embedding[:n]
        batch_first = getattr(self.model.transformer, "batch_first", False)
        x = x if batch_first else x.permute(1, 0, 2)
        x = self.text_transformer_forward(x, attn_mask=self.model.attn_mask[:n, :n])
        x = x if batch_first else x.permute(1, 0, 2)
        return self.model.ln_final(x)

    def text_transformer_forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        blocks = list(self.model.transformer.resblocks)
        return run_blocks(self.model.transformer, blocks[:len(blocks) - self.layer_idx], x, attn_mask)


class FrozenCLIPTextEmbedder(AbstractEncoder):
    """OpenAI CLIP text features (LDM retrieval models): the projected end-token embedding,
    L2-normalised with ``normalize``, repeated ``n_repeat`` times along the token axis."""

    def __init__(self, version: str = "ViT-L/14", device=None, max_length: int = 77, n_repeat: int = 1,
                 normalize: bool = True):
        super().__init__()
        self.model = CLIP(openai_arch(version))
        _check_max_length(max_length, self.model.context_length)
        self.tokenizer = OpenCLIPTokenizer(max_length)
        self.device = device
        self.max_length = max_length
        self.n_repeat = n_repeat
        self.normalize = normalize

    def forward(self, text: Prompts) -> torch.Tensor:
        z = self.model.encode_text(self.tokenizer(text).to(self.device))
        return z / torch.linalg.norm(z, dim=1, keepdim=True) if self.normalize else z

    def encode(self, text: Prompts) -> torch.Tensor:
        z = self(text)
        return repeat(z[:, None, :] if z.ndim == 2 else z, "b 1 d -> b k d", k=self.n_repeat)


class FrozenT5Embedder(AbstractEncoder):
    """T5 encoder states [B, max_length, d] (Raffel et al. 2020), from a local directory (or the local
    Hugging Face cache) only."""

    def __init__(self, version: str = "google/t5-v1_1-large", device=None, max_length: int = 77,
                 freeze: bool = True):
        super().__init__()
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = load_tokenizer_offline(AutoTokenizer, version, "T5 tokenizer")
        self.transformer = load_offline(T5EncoderModel, version, "T5 encoder")
        self.device = device
        self.max_length = max_length
        if freeze:
            self.freeze()

    def forward(self, text: Prompts) -> torch.Tensor:
        batch = self.tokenizer(as_prompt_list(text), truncation=True, max_length=self.max_length, return_length=True,
                               return_overflowing_tokens=False, padding="max_length", return_tensors="pt")
        return self.transformer(input_ids=batch["input_ids"].to(self.device)).last_hidden_state

    def encode(self, text: Prompts) -> torch.Tensor:
        return self(text)


class FrozenCLIPT5Encoder(AbstractEncoder):
    """Both a CLIP and a T5 encoding of the prompts, returned as the list ``[clip_z, t5_z]``."""

    def __init__(self, clip_version: str = "openai/clip-vit-large-patch14", t5_version: str = "google/t5-v1_1-xl",
                 device=None, clip_max_length: int = 77, t5_max_length: int = 77):
        super().__init__()
        self.clip_encoder = FrozenCLIPEmbedder(clip_version, device, max_length=clip_max_length)
        self.t5_encoder = FrozenT5Embedder(t5_version, device, max_length=t5_max_length)

    def forward(self, text: Prompts) -> List[torch.Tensor]:
        return [self.clip_encoder.encode(text), self.t5_encoder.encode(text)]

    def encode(self, text: Prompts) -> List[torch.Tensor]:
        return self(text)


class TransformerEmbedder(AbstractEncoder):
    """Token ids -> embeddings of a trainable transformer encoder (LDM)."""

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int, max_seq_len: int = 77, device=None):
        super().__init__()
        self.device = device
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=Encoder(dim=n_embed, depth=n_layer))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens.to(self.device), return_embeddings=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


class BERTTokenizer(AbstractEncoder):
    """BERT word-piece token ids (``BertTokenizerFast``, padded to ``max_length``). The tokenizer
    files are read from ``version`` -- a local directory or the local Hugging Face cache -- when
    first needed, never downloaded."""

    def __init__(self, device=None, vq_interface: bool = True, max_length: int = 77,
                 version: str = "bert-base-uncased"):
        super().__init__()
        self.device = device
        self.vq_interface = vq_interface
        self.max_length = max_length
        self.version = version
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import BertTokenizerFast

            self._tokenizer = load_tokenizer_offline(BertTokenizerFast, self.version, "BERT tokenizer")
        return self._tokenizer

    def forward(self, text: Prompts) -> torch.Tensor:
        batch = self.tokenizer(as_prompt_list(text), truncation=True, max_length=self.max_length, return_length=True,
                               return_overflowing_tokens=False, padding="max_length", return_tensors="pt")
        return batch["input_ids"].to(self.device)

    @torch.no_grad()
    def encode(self, text: Prompts):
        tokens = self(text)
        return (None, None, [None, None, tokens]) if self.vq_interface else tokens

    def decode(self, text):
        return text


class BERTEmbedder(AbstractEncoder):
    """LDM text encoder: BERT tokens into a transformer trained with the diffusion model."""

    def __init__(self, n_embed: int, n_layer: int, vocab_size: int = 30522, max_seq_len: int = 77, device=None,
                 use_tokenizer: bool = True, embedding_dropout: float = 0.0,
                 tokenizer_version: str = "bert-base-uncased"):
        super().__init__()
        self.use_tknz_fn = use_tokenizer
        if use_tokenizer:
            self.tknz_fn = BERTTokenizer(vq_interface=False, max_length=max_seq_len, version=tokenizer_version)
        self.device = device
        self.transformer = TransformerWrapper(num_tokens=vocab_size, max_seq_len=max_seq_len,
                                              attn_layers=Encoder(dim=n_embed, depth=n_layer),
                                              emb_dropout=embedding_dropout)

    def forward(self, text) -> torch.Tensor:
        tokens = self.tknz_fn(text) if self.use_tknz_fn else text
        return self.transformer(tokens.to(self.device), return_embeddings=True)

    def encode(self, text) -> torch.Tensor:
        return self(text)


class SpatialRescaler(nn.Module):
    """Resizes an image ``n_stages`` times by ``multiplier``, then optionally maps its channels with
    a 1x1 convolution (LDM's spatial conditioning)."""

    METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")

    def __init__(self, n_stages: int = 1, method: str = "bilinear", multiplier: float = 0.5, in_channels: int = 3,
                 out_channels: Optional[int] = None, bias: bool = False):
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"n_stages must be >= 0, got {n_stages}")
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        self.n_stages = n_stages
        self.multiplier = multiplier
        self.interpolator = partial(torch.nn.functional.interpolate, mode=method)
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_stages):
            x = self.interpolator(x, scale_factor=self.multiplier)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

