"""The key formats of LoRA files, read into one list of layers (down, up, scale).

A LoRA layer adds ``scale * up(down(x))`` to a layer's output (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models", eq. 3, with ``scale = alpha / rank``). Files name the
pieces differently:

* kohya-ss (sd-scripts, A1111, ComfyUI): ``lora_unet_<module>.lora_down.weight``, ``.lora_up.weight``
  and ``.alpha``, the module name with ``_`` for ``.``; ``lora_te_`` (also ``lora_te1_``) for the
  text encoder. A missing alpha, or alpha 0, means alpha = rank (scale 1), as kohya defines it.
* PEFT, as diffusers saves it: ``unet.<module>.lora_A.weight`` (down) and ``lora_B.weight`` (up),
  ``text_encoder.<module>...``; alpha from a ``<module>.alpha`` tensor, else from diffusers' adapter
  metadata (``lora_alpha``, ``alpha_pattern``, ``use_rslora``: scale alpha / sqrt(rank)), else rank.
* older diffusers: ``...attn1.processor.to_q_lora.down.weight`` (attention processors, with or
  without ``unet.``), ``...to_q.lora.down.weight``, ``...q_proj.lora_linear_layer.down.weight``,
  the text encoder's ``self_attn.to_q_lora.down.weight``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ldm.modules.lora.files import DIFFUSERS_METADATA_KEY, LoraError
from ldm.modules.lora.naming import TEXT_ENCODER, UNET

_KOHYA = re.compile(r"^lora_(unet|te1?)_([^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT = re.compile(r"^(.+)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|"
                   r"lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)$")
_PROCESSOR = re.compile(r"^(.+?)(\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_KOHYA_COMPONENTS = {"unet": UNET, "te": TEXT_ENCODER, "te1": TEXT_ENCODER}
_DIFFUSERS_COMPONENTS = {"unet.": UNET, "text_encoder.": TEXT_ENCODER}
# A key without a component prefix is the UNet's when it starts like diffusers' UNet (save_attn_procs).
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in.", "conv_out.", "time_embedding.")
_PROCESSOR_TARGETS = {UNET: {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
                      TEXT_ENCODER: {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}
_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up",
          "lora.down.weight": "down", "lora.up.weight": "up", "lora_linear_layer.down.weight": "down",
          "lora_linear_layer.up.weight": "up", "alpha": "alpha"}


@dataclass
class LoraLayer:
    """One layer of a LoRA file. ``name`` is the module name the file gives (kohya: with ``_`` for
    ``.``, ``underscored``); ``keys`` are the file's keys it came from."""
    component: str
    name: str
    underscored: bool
    down: Optional[torch.Tensor] = None
    up: Optional[torch.Tensor] = None
    alpha: Optional[float] = None
    keys: List[str] = field(default_factory=list)
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def complete(self) -> bool:
        return self.down is not None and self.up is not None


@dataclass
class ParsedLora:
    """The complete layers of a file, each with its ``scale`` (``alpha / rank``) set, and the keys
    of no LoRA layer format (LyCORIS LoHa/LoKr, DoRA magnitudes, a second text encoder, ...)."""
    layers: List[LoraLayer]
    unknown_keys: List[str]


def _component_and_name(key: str) -> Tuple[Optional[str], str]:
    for prefix, component in _DIFFUSERS_COMPONENTS.items():
        if key.startswith(prefix):
            return component, key[len(prefix):]
    return (UNET, key) if key.startswith(_UNET_ROOTS) else (None, key)


def _locate(key: str) -> Optional[Tuple[str, str, bool, str]]:
    """(component, module name, underscored, role) of a LoRA key, or None."""
    match = _KOHYA.match(key)
    if match:
        return _KOHYA_COMPONENTS[match.group(1)], match.group(2), True, _ROLES[match.group(3)]
    component, rest = _component_and_name(key)
    if component is None:
        return None
    match = _PROCESSOR.match(rest)
    if match:
        module = f"{match.group(1)}.{_PROCESSOR_TARGETS[component][match.group(3)]}"
        return component, module, False, match.group(4)
    match = _PEFT.match(rest)
    if match:
        return component, match.group(1), False, _ROLES[match.group(2)]
    return None


def _alpha_value(key: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1:
        raise LoraError(f"{key} holds {tensor.numel()} numbers; an alpha is one number")
    return float(tensor.reshape(()).item())


def group_layers(state_dict: Mapping[str, torch.Tensor]) -> Tuple[List[LoraLayer], List[str]]:
    """The file's tensors grouped per layer, and the keys of no known LoRA format."""
    layers: Dict[Tuple[str, str, bool], LoraLayer] = {}
    unknown = []
    for key, tensor in state_dict.items():
        located = _locate(key)
        if located is None:
            unknown.append(key)
            continue
        component, name, underscored, role = located
        layer = layers.setdefault((component, name, underscored), LoraLayer(component, name, underscored))
        layer.keys.append(key)
        if role == "alpha":
            layer.alpha = _alpha_value(key, tensor)
        else:
            setattr(layer, role, tensor)
    return list(layers.values()), unknown


def _metadata_alpha(config: Mapping[str, Any], component: str, name: str) -> Optional[float]:
    """diffusers' per-component LoraConfig: ``alpha_pattern`` (a module name or its ending) over
    ``lora_alpha``."""
    patterns = config.get(f"{component}.alpha_pattern") or {}
    for pattern, alpha in patterns.items():
        if name == pattern or name.endswith("." + pattern):
            return float(alpha)
    alpha = config.get(f"{component}.lora_alpha")
    return None if alpha is None else float(alpha)


def layer_scale(layer: LoraLayer, metadata: Mapping[str, Any]) -> float:
    """``alpha / rank`` as the layer's format defines it (see the module docstring)."""
    if layer.underscored:
        alpha = layer.alpha if layer.alpha else layer.rank
        return alpha / layer.rank
    config = metadata.get(DIFFUSERS_METADATA_KEY) or {}
    alpha = layer.alpha if layer.alpha is not None else _metadata_alpha(config, layer.component, layer.name)
    if alpha is None:
        return 1.0
    if config.get(f"{layer.component}.use_rslora"):
        return alpha / math.sqrt(layer.rank)
    return alpha / layer.rank


def parse_lora(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> ParsedLora:
    """The complete layers of a LoRA file with their scales. The keys of an incomplete layer (a
    down without its up, an alpha alone) count as unknown."""
    layers, unknown = group_layers(state_dict)
    complete = []
    for layer in layers:
        if layer.complete:
            layer.scale = layer_scale(layer, metadata)
            complete.append(layer)
        else:
            unknown.extend(layer.keys)
    return ParsedLora(complete, unknown)
