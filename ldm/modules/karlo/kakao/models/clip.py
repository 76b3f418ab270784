"""CLIP for the Karlo prior: OpenAI's CLIP ViT-L/14 whose text encoder also returns the token
features (Karlo's ``CustomizedCLIP``), and the tokenizer that pads with 0 and returns the mask of
real tokens (``CustomizedTokenizer``). Both are ours: the towers of
:mod:`ldm.modules.encoders.openclip` and the shipped BPE vocabulary (nothing downloads)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ldm.modules.encoders.openclip import CLIP, CLIPArch, causal_mask, openai_arch
from ldm.modules.encoders.tokenizer import OpenCLIPTokenizer, TruncationNotice, as_prompt_list
from ldm.modules.karlo.files import CLIP_WEIGHTS_HELP, KarloFileError, read_clip_weights
from ldm.util import compare_state_dict


class CustomizedCLIP(CLIP):
    """OpenAI CLIP (QuickGELU, OpenAI block layout; ViT-L/14 by default) with
    :meth:`encode_text` returning ``(projected text embedding, token features)``. ``with_visual``
    False leaves out the image tower, which the prior does not use."""

    def __init__(self, arch: Optional[CLIPArch] = None, with_visual: bool = True):
        super().__init__(arch or openai_arch("ViT-L/14"), with_visual=with_visual)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``text`` [B, n] token ids -> (``[B, embed_dim]`` the ln_final features at the end token
        (the highest id of each row) times ``text_projection``, ``[B, n, width]`` all ln_final features)."""
        n = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:n].to(self.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection
        return pooled, x

    @classmethod
    def load_from_checkpoint(cls, ckpt_path: str, with_visual: bool = False) -> "CustomizedCLIP":
        """The CLIP model of a state-dict file or a transformers ``CLIPModel`` directory
        (:func:`~ldm.modules.karlo.files.read_clip_weights`), in eval mode and frozen. The image
        tower only ``with_visual`` (the prior needs the text tower alone)."""
        state_dict, arch = read_clip_weights(ckpt_path)
        if not with_visual:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
        with torch.device("meta"):
            model = cls(arch, with_visual=with_visual)
        report = compare_state_dict(model, state_dict)
        if not report.ok:
            raise KarloFileError(f"{ckpt_path} does not hold a whole CLIP model: {report.lines()[0]} "
                                 f"(expected {CLIP_WEIGHTS_HELP})")
        model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
        model.register_buffer("attn_mask", causal_mask(arch.context_length), persistent=False)  # was on meta
        return model.eval().requires_grad_(False)


class CustomizedTokenizer(OpenCLIPTokenizer):
    """CLIP's BPE with OpenAI's cleaning; rows ``[sot] + ids + [eot]`` padded with 0, over-long
    prompts cut to ``text_ctx`` with the end token kept last (reported once per prompt)."""

    def __init__(self):
        super().__init__()
        self.sot_token = self.sot_token_id
        self.eot_token = self.eot_token_id
        self._notices = {}

    def padded_tokens_and_mask(self, texts: Sequence[str], text_ctx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(``[len(texts), text_ctx]`` token ids, the same-shaped bool mask of real tokens)."""
        texts: List[str] = as_prompt_list(texts)
        content = self.encode(texts)
        notice = self._notices.setdefault(text_ctx, TruncationNotice(text_ctx - 2))
        notice.check(texts, content)
        tokens = self.pack(content, text_ctx)
        lengths = torch.tensor([min(len(ids) + 2, text_ctx) for ids in content])
        mask = torch.arange(text_ctx)[None, :] < lengths[:, None]
        return tokens, mask
