"""CLIP score as torchmetrics reports it (``torchmetrics.multimodal.CLIPScore``): per image,
``100 * cos(image embedding, prompt embedding)`` of a transformers ``CLIPModel``; the score of a set
is the mean, clipped at 0. (Hessel et al. 2021 define ``2.5 * max(cos, 0)`` per image; text-to-image
papers report the torchmetrics form, e.g. with ``openai/clip-vit-large-patch14``.)

The model, tokenizer and image preprocessing come from a local directory only (``save_pretrained``
of the model and its processor); nothing is downloaded. Prompts longer than the text model's
context (77 tokens) are truncated, as torchmetrics does.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm


def _image_processor_class():
    """The PIL-based CLIP image processor (transformers 5 names it ``CLIPImageProcessorPil``; the
    default ``CLIPImageProcessor`` there wants torchvision)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


class ClipScorer:
    """A ``CLIPModel`` with its tokenizer and image processor, read from ``directory``
    (:func:`~ldm.modules.encoders.clip_model.load_local_clip`); a folder that does not give them
    raises :class:`~ldm.modules.encoders.clip_model.ClipDirectoryError` with a one-line reason."""

    def __init__(self, directory: str, device: Union[str, torch.device] = "cpu"):
        from ldm.modules.encoders.clip_model import ClipDirectoryError, load_local_clip
        from ldm.modules.encoders.clip_text import load_offline
        from ldm.util.errors import first_line

        self.device = torch.device(device)
        model, self.tokenizer = load_local_clip(directory)
        self.model = model.requires_grad_(False).to(self.device)
        try:
            self.processor = load_offline(_image_processor_class(), directory, "CLIP image processor")
        except OSError as err:
            raise ClipDirectoryError(directory, first_line(err)) from None
        self.context = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def _embeddings(self, images: np.ndarray, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.context,
                                return_tensors="pt").to(self.device)
        image = _as_embedding(self.model.get_image_features(pixel_values=pixels))
        text = _as_embedding(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                          attention_mask=tokens["attention_mask"]))
        return image, text

    def image_scores(self, batches: Iterable[np.ndarray], prompts: Sequence[str], total: int) -> np.ndarray:
        """``100 * cos`` of each uint8 ``(n, H, W, 3)`` image with its prompt (image i, prompt i)."""
        scores, start = [], 0
        with tqdm(total=total, desc="clip score", unit="img", disable=total < 2) as bar:
            for batch in batches:
                image, text = self._embeddings(batch, prompts[start:start + len(batch)])
                image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
                scores.append((100.0 * (image * text).sum(dim=-1)).double().cpu().numpy())
                start += len(batch)
                bar.update(len(batch))
        return np.concatenate(scores)


def _as_embedding(output) -> torch.Tensor:
    """transformers 5 may return a model output holding the projected embedding (``pooler_output``)
    where 4.x returned the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_score(image_scores: np.ndarray) -> float:
    """The set's CLIP score: the mean of the per-image scores, clipped at 0 (torchmetrics)."""
    return max(float(np.mean(image_scores)), 0.0)
