"""Textual-inversion embeddings (Gal et al. 2022, "An Image is Worth One Word: Personalizing
Text-to-Image Generation using Textual Inversion"): learned token vectors that a prompt calls up by
a new word, loaded into the SD text encoders (:class:`FrozenCLIPEmbedder`, SD 1.x;
:class:`FrozenOpenCLIPEmbedder`, SD 2.x) without changing their weights or vocabulary.

Files (read safely, through the one checkpoint reader):

* A1111 ``.pt``: ``{"string_to_param": {"*": [N, D]}, "name": ..., "step": ...}``;
* ``.safetensors`` with one ``emb_params`` tensor ``[N, D]`` (kohya-ss sd-scripts, A1111);
* diffusers' ``learned_embeds.safetensors`` / ``.bin``: one tensor ``[D]`` or ``[N, D]`` named by its token.

The token is the one given (``FILE:TOKEN``), else the diffusers file's own token, else the file
name without extension (as A1111 names embeddings). In a prompt the token (a whole word, any case)
stands for its N vectors, so it takes N of the prompt's token positions. How: the encoder's
tokenizer gives the token N ids of their own, negative so they can never be a vocabulary id; a
forward pre-hook on the encoder's token embedding looks them up as id 0 and a forward hook puts
the vectors in their place. :meth:`EmbeddingHandle.remove` takes an embedding off again.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder
from ldm.util import CheckpointError, in_cwd_or_repository, load_checkpoint, load_tensors
from ldm.util.checkpoint_files import SAFETENSORS, sniff_format

A1111_KEY = "string_to_param"
KOHYA_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")
# Token vector widths of the text encoders people train embeddings for, to name a file's model.
_MODELS_BY_WIDTH = {768: "SD 1.x (CLIP ViT-L/14)", 1024: "SD 2.x (OpenCLIP ViT-H/14)", 1280: "SDXL (OpenCLIP ViT-bigG)"}
_PATH_CHARACTERS = "./\\"


class EmbeddingError(CheckpointError):
    """An embedding file that cannot be read or does not fit the text encoder; one line."""


class EmbeddingSpec(NamedTuple):
    """An embedding as a command line names it: a file and the token to use it by (None: the file's)."""
    path: str
    token: Optional[str]


def parse_embedding_spec(spec: str) -> EmbeddingSpec:
    """``"style.pt:<my-style>"`` -> ``EmbeddingSpec("style.pt", "<my-style>")``; without ``:TOKEN``
    the token is None (the file's own). A path with a colon (``C:\\emb\\x.pt``) stays whole: what
    follows the last ``:`` is a token only when it is no part of a path and the whole is no file."""
    path, sep, tail = spec.rpartition(":")
    if not sep or os.path.isfile(in_cwd_or_repository(spec)) or any(c in tail for c in _PATH_CHARACTERS):
        path, tail = spec, ""
    if not path:
        raise EmbeddingError(f"--embedding {spec}: give an embedding file, as FILE or FILE:TOKEN")
    if sep and not tail and path != spec:
        raise EmbeddingError(f"--embedding {spec}: give a token after ':', or leave the ':' out")
    return EmbeddingSpec(path, check_token(tail, f"--embedding {spec}") if tail else None)


def check_token(token: str, where: str) -> str:
    """A token is one word: no spaces, and not empty."""
    if not token or any(char.isspace() for char in token):
        raise EmbeddingError(f"{where}: the token must be one word without spaces, got {token!r}")
    return token


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
class EmbeddingFile(NamedTuple):
    """An embedding's vectors ``[N, D]`` (float32) and the token the file names, if any (diffusers)."""
    vectors: torch.Tensor
    token: Optional[str]


def read_embedding_file(path: str) -> EmbeddingFile:
    """The vectors of an A1111, kohya-ss or diffusers embedding file; :class:`EmbeddingError` with a
    one-line reason for anything else (a missing file, a pickle with code, several tensors, ...)."""
    resolved = in_cwd_or_repository(os.fspath(path))
    if not os.path.isfile(resolved):
        raise EmbeddingError(f"embedding file not found: {path}")
    try:
        if sniff_format(resolved) == SAFETENSORS:
            contents = load_checkpoint(resolved)[0]
        else:
            contents = load_tensors(resolved, allow_plain_values=True)
    except CheckpointError as err:
        raise EmbeddingError(str(err)) from None
    vectors, token = _vectors_and_token(path, contents)
    return EmbeddingFile(_as_matrix(path, vectors), token)


def _vectors_and_token(path: str, contents) -> Tuple[torch.Tensor, Optional[str]]:
    if not isinstance(contents, dict):
        raise EmbeddingError(f"{path} holds a {type(contents).__name__}, not an embedding (a dict of tensors)")
    if A1111_KEY in contents:
        params = contents[A1111_KEY]
        if not isinstance(params, dict) or not params:
            raise EmbeddingError(f"{path}: its {A1111_KEY} is not a dict of tensors")
        return next(iter(params.values())), None
    if KOHYA_KEY in contents:
        return contents[KOHYA_KEY], None
    if all(key in contents for key in SDXL_KEYS):
        raise EmbeddingError(f"{path} is an SDXL embedding ({', '.join(SDXL_KEYS)}: one part per text encoder); "
                             "SD 1.x and 2.x models take embeddings of one text encoder")
    tensors = {key: value for key, value in contents.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != 1:
        names = ", ".join(list(contents)[:3])
        raise EmbeddingError(f"{path} is not a textual-inversion embedding: it holds {len(tensors)} tensors "
                             f"({names}); an embedding holds {A1111_KEY} (A1111), {KOHYA_KEY} (kohya-ss) "
                             "or one tensor named by its token (diffusers)")
    (token, vectors), = tensors.items()
    return vectors, token


def _as_matrix(path: str, vectors) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point() or vectors.dim() not in (1, 2):
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise EmbeddingError(f"{path}: the embedding must be vectors of numbers, [N, D] or [D], got {shape}")
    matrix = vectors.detach().float().reshape(-1, vectors.shape[-1])
    if matrix.shape[0] == 0:
        raise EmbeddingError(f"{path}: the embedding holds no vectors")
    return matrix


# ---------------------------------------------------------------------------------------------
# The encoder side
# ---------------------------------------------------------------------------------------------
def token_embedding_of(encoder: nn.Module) -> nn.Embedding:
    """The ``nn.Embedding`` that turns an SD text encoder's token ids into vectors."""
    if isinstance(encoder, FrozenCLIPEmbedder):
        return encoder.transformer.text_model.embeddings.token_embedding
    return encoder.model.token_embedding


class AddedTokens:
    """The embeddings loaded into one text encoder (``encoder.added_tokens``): their tokens, the
    ids that stand for their vectors, and the hooks on the encoder's token embedding."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.ids: Dict[str, List[int]] = {}          # lower-case token -> its vectors' ids
        self.vectors: Dict[int, torch.Tensor] = {}   # id (negative) -> vector [D]
        self._last_id = 0
        self._pending: Optional[torch.Tensor] = None
        self._pattern: Optional[re.Pattern] = None
        embedding = token_embedding_of(encoder)
        self._hooks = [embedding.register_forward_pre_hook(self._look_up_as_zero),
                       embedding.register_forward_hook(self._put_vectors)]

    def add(self, token: str, vectors: torch.Tensor) -> List[int]:
        ids = [self._last_id - 1 - i for i in range(len(vectors))]
        self._last_id = ids[-1]
        self.ids[token.lower()] = ids
        self.vectors.update(zip(ids, vectors))
        self._pattern = None
        return ids

    def discard(self, token: str) -> None:
        for index in self.ids.pop(token.lower(), []):
            del self.vectors[index]
        self._pattern = None
        if not self.ids:
            for hook in self._hooks:
                hook.remove()
            del self.encoder.added_tokens

    def pattern(self) -> re.Pattern:
        """The tokens as whole words (longest first), any case."""
        if self._pattern is None:
            tokens = sorted(self.ids, key=len, reverse=True)
            self._pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, tokens)) + r")(?!\w)", re.IGNORECASE)
        return self._pattern

    def content_ids(self, prompts: List[str], encode: Callable[[List[str]], List[List[int]]]) -> List[List[int]]:
        """Each prompt's content ids: its text between the tokens as ``encode`` gives it, each token
        as its vectors' ids."""
        pieces = [self.pattern().split(prompt) for prompt in prompts]  # text, token, text, token, ..., text
        texts = [piece for split in pieces for piece in split[::2] if piece.strip()]
        encoded = iter(encode(texts)) if texts else iter(())
        out = []
        for split in pieces:
            ids: List[int] = []
            for i, piece in enumerate(split):
                if i % 2:
                    ids.extend(self.ids[piece.lower()])
                elif piece.strip():
                    ids.extend(next(encoded))
            out.append(ids)
        return out

    def _look_up_as_zero(self, module: nn.Module, args: tuple):
        ids = args[0]
        added = ids < 0
        if not added.any():
            self._pending = None
            return None
        self._pending = ids
        return (ids.masked_fill(added, 0),) + tuple(args[1:])

    def _put_vectors(self, module: nn.Module, args: tuple, output: torch.Tensor):
        ids, self._pending = self._pending, None
        if ids is None:
            return None
        added = ids < 0
        rows = torch.stack([self.vectors[i] for i in ids[added].tolist()]).to(output.device, output.dtype)
        output = output.clone()
        output[added] = rows
        return output


class EmbeddingHandle:
    """An embedding loaded into a text encoder: its ``token``, ``vectors`` and file ``path``;
    :meth:`remove` takes it off (prompts read the token as ordinary text again). A context manager."""

    def __init__(self, encoder: nn.Module, path: str, token: str, vectors: torch.Tensor):
        self.encoder, self.path, self.token, self.vectors = encoder, path, token, vectors
        self.ids: List[int] = []

    @property
    def applied(self) -> bool:
        added = self.encoder.added_tokens
        return added is not None and added.ids.get(self.token.lower()) == self.ids

    def used_in(self, text: str) -> bool:
        """Whether ``text`` names the token (as a whole word, any case)."""
        return self.applied and re.search(r"(?<!\w)" + re.escape(self.token) + r"(?!\w)", text, re.IGNORECASE) \
            is not None

    def report(self) -> str:
        count = len(self.vectors)
        return (f"embedding {self.path}: token {self.token!r} ({count} vector{'s' if count > 1 else ''} of "
                f"{self.vectors.shape[1]})")

    def remove(self) -> None:
        """Take the embedding off the encoder (again: nothing happens)."""
        if self.applied:
            self.encoder.added_tokens.discard(self.token)

    def __enter__(self) -> "EmbeddingHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def find_text_encoder(model: nn.Module) -> nn.Module:
    """The SD text encoder in ``model`` (a LatentDiffusion, or the encoder itself)."""
    found = [module for module in model.modules() if isinstance(module, (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder))]
    if len(found) == 1:
        return found[0]
    if found:
        raise EmbeddingError(f"the model holds {len(found)} CLIP text encoders; load the embedding into one of them")
    encoder = getattr(model, "cond_stage_model", None)
    what = (f"this model's text encoder is {type(encoder).__name__}" if encoder is not None
            else "this model has no text encoder")
    raise EmbeddingError(f"textual-inversion embeddings need a CLIP text encoder (FrozenCLIPEmbedder of SD 1.x or "
                         f"FrozenOpenCLIPEmbedder of SD 2.x), but {what}")


def load_embedding(model: nn.Module, path: str, token: Optional[str] = None, verbose: bool = True) -> EmbeddingHandle:
    """Load the embedding file ``path`` into the text encoder of ``model`` (a LatentDiffusion of SD
    1.x/2.x or its text encoder) under ``token`` (default: the diffusers file's token, else the file
    name without extension). Returns the :class:`EmbeddingHandle` that removes it. Raises
    :class:`EmbeddingError` (one line) for a file that cannot be read, vectors of another width than
    the encoder's, more vectors than a prompt holds, or a token already loaded."""
    encoder = find_text_encoder(model)
    vectors, file_token = read_embedding_file(path)
    token = check_token(token or file_token or os.path.splitext(os.path.basename(os.fspath(path)))[0],
                        f"embedding {path}")
    width = token_embedding_of(encoder).embedding_dim
    if vectors.shape[1] != width:
        made_for = _MODELS_BY_WIDTH.get(vectors.shape[1])
        raise EmbeddingError(f"{path} does not fit the text encoder: its vectors have {vectors.shape[1]} numbers, the "
                             f"encoder's tokens {width}" + (f"; it is made for {made_for}" if made_for else ""))
    room = encoder.max_length - 2
    if len(vectors) > room:
        raise EmbeddingError(f"{path} has {len(vectors)} vectors, more than the {room} tokens a prompt holds")
    if encoder.added_tokens is not None and token.lower() in encoder.added_tokens.ids:
        raise EmbeddingError(f"embedding {path}: the token {token!r} is taken by another embedding; give another "
                             "as FILE:TOKEN")
    if encoder.added_tokens is None:
        encoder.added_tokens = AddedTokens(encoder)
    handle = EmbeddingHandle(encoder, os.fspath(path), token, vectors)
    handle.ids = encoder.added_tokens.add(token, vectors)
    if verbose:
        print(handle.report())
    return handle
