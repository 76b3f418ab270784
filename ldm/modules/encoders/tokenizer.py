"""CLIP tokenization from the BPE vocabulary shipped in ``data/`` (nothing is downloaded).

One vocabulary, two conventions, as the originals use them:

* SD 1.x (``FrozenCLIPEmbedder``): transformers' ``CLIPTokenizer``; rows are padded with
  ``<|endoftext|>`` (49407).
* SD 2.x (``FrozenOpenCLIPEmbedder``): the rules of ``open_clip.tokenize`` -- HTML entities
  unescaped, whitespace collapsed, lower-cased; rows padded with 0.

Both keep the start token, at most ``length - 2`` content tokens and the end token. Prompts that
are cut are reported once (:class:`TruncationNotice`); the originals cut them silently.
"""
from __future__ import annotations

import gzip
import html
import os
import warnings
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple, Union

import torch

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408

Prompts = Union[str, Sequence[str]]


def as_prompt_list(text: Prompts) -> List[str]:
    """A prompt or a batch of prompts as a list of strings."""
    if isinstance(text, str):
        return [text]
    prompts = list(text)
    if not prompts:
        raise ValueError("expected a prompt or a non-empty list of prompts, got an empty list")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
    return prompts


def byte_symbols() -> Dict[int, str]:
    """Byte-level BPE alphabet (Radford et al. 2019, GPT-2, sec. 2.2): each of the 256 byte values
    gets a printable character; printable latin-1 bytes stand for themselves, the others are
    mapped in order onto ``chr(256 + n)``. Dict order is vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    symbols = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in symbols):
        symbols[b] = chr(256 + n)
    return symbols


@lru_cache(maxsize=None)
def _read_vocabulary() -> Tuple[Tuple[Tuple[str, str], ...], Tuple[str, ...]]:
    if not os.path.isfile(VOCAB_PATH):
        raise FileNotFoundError(f"the CLIP BPE vocabulary is missing from the installation: {VOCAB_PATH} "
                                "(reinstall ldm; the file ships in ldm/modules/encoders/data)")
    with gzip.open(VOCAB_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:1 + NUM_MERGES])
    symbols = list(byte_symbols().values())
    tokens = (symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
              + [START_TOKEN, END_TOKEN])
    return merges, tuple(tokens)


def clip_vocabulary() -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """The CLIP vocabulary (49,408 entries: 256 byte symbols, their ``</w>`` variants, one entry
    per merge, then ``<|startoftext|>`` 49406 and ``<|endoftext|>`` 49407) and the merge list."""
    merges, tokens = _read_vocabulary()
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"the CLIP vocabulary at {VOCAB_PATH} has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, list(merges)


def build_clip_tokenizer(model_max_length: int = 77):
    """transformers' ``CLIPTokenizer`` over the shipped vocabulary, configured as
    ``openai/clip-vit-large-patch14``'s (bos/eos/pad/unk as the original, no download)."""
    import inspect

    import transformers

    vocab, merges = clip_vocabulary()
    if "vocab" in inspect.signature(transformers.CLIPTokenizer.__init__).parameters:
        return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return _build_clip_tokenizer_from_files(vocab, merges, model_max_length)


# transformers' CLIPTokenizer (5.x) pipeline: pieces of text the BPE sees, as CLIP cuts them.
CLIP_PIECES = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenIds:
    """CLIP token ids of prompts from the ``tokenizers`` pipeline that transformers' ``CLIPTokenizer``
    runs (NFC, whitespace runs to one space, lower case; CLIP's pieces; byte-level BPE with ``</w>``
    word ends; the start and end tokens matched as special), built here so that a model that needs
    only ids (the shapes, SD 1.x and SD 2.x text encoders) does not import transformers: its package
    initialisation indexes every model it ships, about 1 s of every command (docs/PERFORMANCE.md,
    "Start-up"). ``split_special_tokens``: read the start and end tokens typed in a prompt as plain
    text (open_clip does), as transformers' ``split_special_tokens=True``."""

    bos_token_id = VOCAB_SIZE - 2
    eos_token_id = VOCAB_SIZE - 1
    pad_token_id = VOCAB_SIZE - 1  # the end token, as CLIPTokenizer pads

    def __init__(self, split_special_tokens: bool = False):
        from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        vocab, merges = clip_vocabulary()
        self._tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                        end_of_word_suffix="</w>", fuse_unk=False, unk_token=END_TOKEN))
        self._tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(CLIP_PIECES), behavior="removed", invert=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False)])
        self._tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                            for t in (START_TOKEN, END_TOKEN)])
        self._tokenizer.encode_special_tokens = split_special_tokens
        self.split_special_tokens = split_special_tokens

    def __reduce__(self):
        # Built again when copied or unpickled: the tokenizers library's own pickling drops
        # ``encode_special_tokens``, which would turn typed "<|endoftext|>" back into the end token.
        return ClipTokenIds, (self.split_special_tokens,)

    def content_ids(self, texts: Prompts) -> List[List[int]]:
        """Token ids of each prompt without start and end tokens, uncut."""
        encodings = self._tokenizer.encode_batch(as_prompt_list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]


def _build_clip_tokenizer_from_files(vocab: Dict[str, int], merges: List[Tuple[str, str]],
                                     model_max_length: int):
    """transformers 4.x takes vocabulary and merges only as files (``vocab_file``/``merges_file``)."""
    import json
    import tempfile

    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizerFast(vocab_file=vocab_file, merges_file=merges_file,
                                 model_max_length=model_max_length)


def clean_like_open_clip(text: str) -> str:
    """open_clip's default ('lower') text cleaning, without ftfy: HTML entities unescaped twice,
    whitespace runs collapsed to one space, ends stripped, lower-cased."""
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def pack_rows(content: Sequence[Sequence[int]], length: int, start_id: int, end_id: int,
              pad_id: int) -> torch.Tensor:
    """Rows ``[start] + ids[:length-2] + [end] + [pad, ...]`` of exactly ``length`` tokens."""
    rows = torch.full((len(content), length), pad_id, dtype=torch.long)
    for i, ids in enumerate(content):
        row = [start_id, *list(ids)[:length - 2], end_id]
        rows[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return rows


def split_into_windows(content: Sequence[Sequence[int]], window: int) -> List[List[List[int]]]:
    """Each prompt's content ids cut into consecutive windows of ``window`` tokens; every prompt
    gets the same number of windows (empty ones appended), at least one."""
    per_prompt = [[list(ids[i:i + window]) for i in range(0, len(ids), window)] or [[]] for ids in content]
    count = max(len(windows) for windows in per_prompt)
    return [windows + [[] for _ in range(count - len(windows))] for windows in per_prompt]


class OpenCLIPTokenizer:
    """``open_clip.tokenize`` over the shipped vocabulary: start token 49406, content, end token
    49407, zero padding, truncation that keeps the end token last. The byte-pair encoding itself
    is :class:`ClipTokenIds`' (the pipeline of transformers' ``CLIPTokenizer``: same vocabulary,
    same pre-tokenization pattern)."""

    pad_token_id = 0
    sot_token_id = ClipTokenIds.bos_token_id
    eot_token_id = ClipTokenIds.eos_token_id

    def __init__(self, context_length: int = 77):
        self.context_length = context_length
        # open_clip reads "<|endoftext|>" typed in a prompt as plain text, not as the end token.
        self.bpe = ClipTokenIds(split_special_tokens=True)

    def encode(self, texts: Prompts) -> List[List[int]]:
        """Content token ids (no start/end tokens, no truncation) of each prompt."""
        return self.bpe.content_ids([clean_like_open_clip(t) for t in as_prompt_list(texts)])

    def pack(self, content: Sequence[Sequence[int]], context_length: int = None) -> torch.Tensor:
        return pack_rows(content, context_length or self.context_length, self.sot_token_id,
                         self.eot_token_id, self.pad_token_id)

    def __call__(self, texts: Prompts, context_length: int = None) -> torch.Tensor:
        """Token rows ``[len(texts), context_length]`` as ``open_clip.tokenize`` returns them."""
        return self.pack(self.encode(texts), context_length)


class LongPromptWarning(UserWarning):
    """A prompt was longer than the text encoder reads and its tail was dropped."""


class TruncationNotice:
    """Warns once per distinct over-long prompt, naming how many tokens were dropped."""

    def __init__(self, content_limit: int):
        self.content_limit = content_limit
        self._reported = set()

    def dropped(self, content: Sequence[Sequence[int]]) -> List[int]:
        return [max(0, len(ids) - self.content_limit) for ids in content]

    def check(self, prompts: Sequence[str], content: Sequence[Sequence[int]]) -> None:
        fresh = [(p, n) for p, n in zip(prompts, self.dropped(content)) if n > 0 and p not in self._reported]
        if not fresh:
            return
        self._reported.update(p for p, _ in fresh)
        parts = [f"{n} tokens dropped from {_abbreviate(p)!r}" for p, n in fresh]
        warnings.warn(f"prompt longer than the text encoder's {self.content_limit} tokens, cut as the original "
                      f"does: {'; '.join(parts)} (pass chunk_long_prompts=True to encode the rest in further "
                      "chunks)", LongPromptWarning, stacklevel=3)


def _abbreviate(prompt: str, width: int = 60) -> str:
    return prompt if len(prompt) <= width else prompt[:width - 3] + "..."
