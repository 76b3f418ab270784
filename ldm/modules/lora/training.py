"""Trainable LoRA layers on a model whose own weights stay frozen, saved as kohya-ss files.

:class:`TrainableLora` puts a ``down``/``up`` pair (rank ``rank``, scale ``alpha / rank``) on the
chosen layers of a UNet and, optionally, of a CLIP text encoder, as forward hooks that add
``scale * up(down(x))`` to each layer's output (the same maths :func:`~ldm.modules.lora.apply_lora`
applies). ``up`` starts at zero, so a fresh LoRA leaves the model's outputs unchanged. The pairs
are ``nn.Parameter`` s of this module, so an optimizer, an EMA and Lightning checkpoints see them
and nothing else. :meth:`TrainableLora.kohya_state_dict` names them as kohya-ss sd-scripts does
(``lora_unet_<diffusers module>``, ``lora_te_<transformers module>``, ``_`` for ``.``), so the
saved file loads with ``--lora``, diffusers' ``load_lora_weights`` and the kohya/A1111 tools.
"""
from __future__ import annotations

import json
import math
import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from ldm.modules.lora.apply import _conv_term, _linear_term
from ldm.modules.lora.naming import TEXT_ENCODER, UNET, find_lora_components, unet_diffusers_names
from ldm.util import save_checkpoint

# Target groups: layers of the UNet (ldm paths) and of the CLIP text encoder (transformers paths).
UNET_GROUPS = {
    "attn": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",   # the attention projections
    "proj": r"\.(proj_in|proj_out)$",                      # into and out of each spatial transformer
    "ff": r"\.ff\.net\.(0\.proj|2)$",                      # the transformer blocks' feed-forward
    "conv": r"\.(in_layers\.2|out_layers\.3)$",             # the ResBlocks' 3x3 convolutions (conv1, conv2)
    "emb": r"\.emb_layers\.1$",                            # the ResBlocks' timestep projections (time_emb_proj)
}
TEXT_GROUPS = {"text": r"self_attn\.(q_proj|k_proj|v_proj|out_proj)$"}
TARGET_GROUPS = tuple(UNET_GROUPS) + tuple(TEXT_GROUPS)
KOHYA_PREFIXES = {UNET: "lora_unet_", TEXT_ENCODER: "lora_te_"}


class LoraPair(nn.Module):
    """The trainable ``down`` (rank x in[, kh, kw]) and ``up`` (out x rank[, 1, 1]) of one layer:
    ``down`` as a Linear/Conv2d's default initialisation, ``up`` zero."""

    def __init__(self, layer: nn.Module, rank: int):
        super().__init__()
        weight = layer.weight
        out_features, in_features, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
        down = torch.empty(rank, in_features, *kernel, dtype=weight.dtype, device=weight.device)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(out_features, rank, *((1, 1) if kernel else ()),
                                           dtype=weight.dtype, device=weight.device))


def _select(named: Iterable[Tuple[str, nn.Module]], patterns: List[str]) -> List[Tuple[str, nn.Module]]:
    """The Linear and Conv2d layers whose path matches one of ``patterns``."""
    return [(path, module) for path, module in named
            if isinstance(module, (nn.Linear, nn.Conv2d)) and any(re.search(p, path) for p in patterns)]


def _unet_layers(unet: nn.Module, groups: List[str]) -> Dict[str, nn.Module]:
    """kohya name -> layer, for the UNet layers of ``groups``."""
    diffusers = unet_diffusers_names(unet)
    chosen = _select(unet.named_modules(), [UNET_GROUPS[g] for g in groups if g in UNET_GROUPS])
    return {KOHYA_PREFIXES[UNET] + diffusers[path].replace(".", "_"): module for path, module in chosen}


def _text_layers(encoder: nn.Module, groups: List[str]) -> Dict[str, nn.Module]:
    """kohya name -> layer, for the CLIP text encoder's layers of ``groups``."""
    patterns = [TEXT_GROUPS[g] for g in groups if g in TEXT_GROUPS]
    if not patterns:
        return {}
    if not isinstance(encoder, FrozenCLIPEmbedder):
        raise ValueError(f"lora_config targets 'text' need a CLIP text encoder (FrozenCLIPEmbedder), the model's "
                         f"is {type(encoder).__name__}; leave 'text' out to train the UNet's LoRA only")
    chosen = _select(encoder.transformer.named_modules(), patterns)
    return {KOHYA_PREFIXES[TEXT_ENCODER] + path.replace(".", "_"): module for path, module in chosen}


class TrainableLora(nn.Module):
    """Trainable LoRA pairs hooked onto the ``targets`` groups of ``model``'s UNet (``attn``,
    ``proj``, ``ff``, ``conv``, ``emb``) and CLIP text encoder (``text``); ``alpha`` defaults to ``rank`` (scale 1).
    ``pairs`` maps kohya layer names to :class:`LoraPair`; :meth:`remove` takes the hooks off."""

    def __init__(self, model: nn.Module, rank: int = 4, alpha: Optional[float] = None,
                 targets: Iterable[str] = ("attn",)):
        super().__init__()
        targets = list(targets)
        unknown = [t for t in targets if t not in TARGET_GROUPS]
        if unknown or not targets:
            raise ValueError(f"lora_config targets must be a non-empty list of {', '.join(TARGET_GROUPS)}; "
                             f"got {targets}")
        if int(rank) != rank or rank < 1:
            raise ValueError(f"lora_config rank must be a positive integer, got {rank}")
        self.rank, self.alpha, self.targets = int(rank), float(rank if alpha is None else alpha), targets
        components = find_lora_components(model)
        if UNET not in components:
            raise ValueError("lora_config needs a model with a UNetModel to put the LoRA layers on")
        layers = _unet_layers(components[UNET][1], targets)
        if "text" in targets:
            found = components.get(TEXT_ENCODER)
            encoder = found[1] if found else getattr(model, "cond_stage_model", None)
            layers.update(_text_layers(encoder, targets))
        if not layers:
            raise ValueError(f"lora_config targets {targets} select no layer of the model")
        self.pairs = nn.ModuleDict({name: LoraPair(layer, self.rank) for name, layer in layers.items()})
        self._hooks = [layer.register_forward_hook(self._hook(self.pairs[name], layer))
                       for name, layer in layers.items()]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _hook(self, pair: LoraPair, layer: nn.Module):
        term = _conv_term if isinstance(layer, nn.Conv2d) else _linear_term

        def add_lora(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + self.scale * term(module, inputs[0], pair.down, pair.up)
        return add_lora

    def remove(self) -> None:
        """Take the hooks off (the model computes as without LoRA again)."""
        while self._hooks:
            self._hooks.pop().remove()

    def kohya_state_dict(self) -> Dict[str, torch.Tensor]:
        """The pairs as kohya-ss names them: ``<name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
        out = {}
        for name, pair in self.pairs.items():
            out[f"{name}.lora_down.weight"] = pair.down.detach().float().cpu()
            out[f"{name}.lora_up.weight"] = pair.up.detach().float().cpu()
            out[f"{name}.alpha"] = torch.tensor(self.alpha)
        return out

    def metadata(self, extra: Optional[Mapping[str, object]] = None) -> Dict[str, str]:
        """kohya-ss ``ss_*`` metadata of the file (the keys its tools read), plus ``extra``."""
        info = {"ss_network_module": "networks.lora", "ss_network_dim": self.rank, "ss_network_alpha": self.alpha,
                "ss_network_args": json.dumps({"targets": self.targets})}
        info.update(extra or {})
        return {key: str(value) for key, value in info.items() if value != ""}

    def save(self, path: str, extra_metadata: Optional[Mapping[str, object]] = None) -> None:
        """Write the kohya-format ``.safetensors`` file (atomically)."""
        if not str(path).endswith(".safetensors"):
            raise ValueError(f"a LoRA file is written as .safetensors, got {path}")
        save_checkpoint(self.kohya_state_dict(), path, self.metadata(extra_metadata))
