"""A small trainable text encoder for the embedded "shapes" models: CLIP tokenization over a
closed vocabulary, then a few bidirectional transformer layers.

The full CLIP vocabulary (49,408 tokens) would make the embedding table alone larger than the
rest of a shapes model, so the table holds only the CLIP tokens of ``words`` (the world's
vocabulary, listed in the config), plus the start, end and "unknown" tokens. Any other word is
read as "unknown".
"""
from __future__ import annotations

import re
import warnings
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from ldm.modules.encoders.base import AbstractEncoder
from ldm.modules.encoders.tokenizer import (
    VOCAB_SIZE,
    ClipTokenIds,
    Prompts,
    TruncationNotice,
    as_prompt_list,
    pack_rows,
)

UNKNOWN_SLOT, START_SLOT, END_SLOT = 0, 1, 2
UNKNOWN_WORD_REPORTS = 3  # prompts reported one by one; later ones (training on captions) are not


class UnknownWordsWarning(UserWarning):
    """A prompt holds words outside a closed-vocabulary encoder's vocabulary (read as "unknown")."""


def vocabulary_token_ids(tokenizer: ClipTokenIds, words: Sequence[str]) -> List[int]:
    """The sorted distinct CLIP token ids that ``words`` tokenize to."""
    ids = tokenizer.content_ids(list(words))
    return sorted({token for per_word in ids for token in per_word})


def token_slots(token_ids: Sequence[int], start_id: int, end_id: int) -> torch.Tensor:
    """The embedding slot of every CLIP token id: ``token_ids`` get slots 3, 4, ... in order, the
    start and end tokens their own, any other token the unknown slot. Computed on the host, also
    while the model is built on the meta device (where indexing runs torch's slow reference code)."""
    slots = torch.full((VOCAB_SIZE,), UNKNOWN_SLOT, dtype=torch.long, device="cpu")
    slots[torch.tensor(token_ids, dtype=torch.long, device="cpu")] = torch.arange(
        3, 3 + len(token_ids), device="cpu")
    slots[start_id] = START_SLOT
    slots[end_id] = END_SLOT
    return slots


class ShapesTextEncoder(AbstractEncoder):
    """Prompts -> [B, max_length, width] token features, trained with the diffusion model
    (``cond_stage_trainable: true``). Rows are ``<start> tokens <end> <end> ...`` as in SD 1.x.

    ``words``: the vocabulary (order does not matter; it fixes the embedding table's size).
    ``width``, ``layers``, ``heads``: the transformer (pre-LayerNorm, GELU, 4x MLP).
    ``causal``: each token attends only to itself and the tokens before it, as in CLIP. Then a
    word's features depend on the words that precede it, so "blue" after "above" differs from
    "blue" after "below" from the first step of training; without the mask, which object a two-object
    caption puts on top is the parity of (relation word, word order), which neither carries alone
    and which the bidirectional encoder was seen to erase (docs/SHAPES.md).
    """

    def __init__(self, words: Sequence[str], width: int = 128, layers: int = 2, heads: int = 4,
                 max_length: int = 20, device=None, freeze: bool = False, causal: bool = False):
        super().__init__()
        if not words:
            raise ValueError("ShapesTextEncoder needs a non-empty list of words")
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be true or false, got {causal!r}")
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (start, one token, end), got {max_length}")
        self.tokenizer = ClipTokenIds()
        self.max_length = max_length
        self.device = device
        self.causal = causal
        self.truncation = TruncationNotice(max_length - 2)
        self._checked_prompts: set = set()
        self._reports = 0
        token_ids = vocabulary_token_ids(self.tokenizer, words)
        slots = token_slots(token_ids, self.tokenizer.bos_token_id, self.tokenizer.eos_token_id)
        self.register_buffer("slot_of_token", slots, persistent=False)
        self.token_embedding = nn.Embedding(3 + len(token_ids), width)
        # N(0, 0.01^2), the values of ``torch.randn(...) * 0.01``, drawn in place so that a build
        # on the meta device does no arithmetic (ldm.util.meta_init).
        self.positional_embedding = nn.Parameter(nn.init.normal_(torch.empty(max_length, width), std=0.01))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_layer_norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if freeze:
            self.freeze()

    def tokenize(self, text: Prompts) -> torch.Tensor:
        """CLIP token rows [prompts, max_length]: start, content (cut with a warning), end padding."""
        prompts = as_prompt_list(text)
        content = self.tokenizer.content_ids(prompts)
        self.truncation.check(prompts, content)
        self._warn_about_unknown_words(prompts)
        tok = self.tokenizer
        return pack_rows(content, self.max_length, tok.bos_token_id, tok.eos_token_id, tok.eos_token_id)

    def unknown_words(self, prompt: str) -> List[str]:
        """The words of ``prompt`` (split at spaces and punctuation) with a token outside the vocabulary."""
        words = re.findall(r"[\w'-]+", prompt.lower())
        if not words:
            return []
        ids = self.tokenizer.content_ids(words)
        slots = self.slot_of_token.cpu()
        return [word for word, tokens in zip(words, ids) if any(int(slots[t]) == UNKNOWN_SLOT for t in tokens)]

    def _warn_about_unknown_words(self, prompts: Sequence[str]) -> None:
        """One warning per distinct prompt that holds unknown words, naming them: the encoder
        reads them all as one "unknown" token, so they cannot steer the image. After
        ``UNKNOWN_WORD_REPORTS`` such prompts (a caption dataset), one last warning says so."""
        for prompt in prompts:
            if prompt in self._checked_prompts or self._reports > UNKNOWN_WORD_REPORTS:
                continue
            self._checked_prompts.add(prompt)
            unknown = list(dict.fromkeys(self.unknown_words(prompt)))
            if not unknown:
                continue
            self._reports += 1
            if self._reports > UNKNOWN_WORD_REPORTS:
                warnings.warn("more prompts with words the shapes text encoder does not know; not reported further",
                              UnknownWordsWarning, stacklevel=3)
                continue
            warnings.warn(f"the shapes text encoder does not know {', '.join(map(repr, unknown))}: ignored "
                          f"(read as 'unknown') in {prompt!r}; it knows colours, shapes, sizes and relations, "
                          f"e.g. 'a red circle above a blue square'", UnknownWordsWarning, stacklevel=3)

    def known_fraction(self, text: Prompts) -> Tuple[float, ...]:
        """Per prompt, the fraction of its content tokens that are in the vocabulary."""
        rows = self.tokenize(text)
        slots = self.slot_of_token.cpu()[rows]
        content = rows != self.tokenizer.eos_token_id
        content[:, 0] = False
        known = (slots != UNKNOWN_SLOT) & content
        return tuple((k.sum() / max(int(c.sum()), 1)).item() for k, c in zip(known, content))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        slots = self.slot_of_token[tokens.to(self.slot_of_token.device)]
        x = self.token_embedding(slots) + self.positional_embedding[:tokens.shape[1]]
        mask = None
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=x.device, dtype=x.dtype)
        return self.final_layer_norm(self.transformer(x, mask=mask, is_causal=self.causal))

    def forward(self, text: Prompts) -> torch.Tensor:
        return self.encode_tokens(self.tokenize(text).to(self.device))

    def encode(self, text: Prompts) -> torch.Tensor:
        return self(text)
