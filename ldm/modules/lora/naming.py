"""Where the layer names of a LoRA file point in our models.

LoRA files name layers as the library they were trained with lays the model out, not as the
original checkpoints do: kohya-ss and diffusers name the UNet after diffusers'
``UNet2DConditionModel`` (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``) and the
text encoder after transformers' ``CLIPTextModel`` (``text_model.encoder.layers.0.self_attn.q_proj``),
for SD 2.x too, whose OpenCLIP tower packs q, k and v into one ``in_proj_weight``. This module maps
those names onto our modules (original ldm layout):

* :func:`unet_diffusers_names`: ldm UNet module path -> diffusers module path, read off the UNet's
  structure (levels, res blocks, attentions, resamplers), so it holds for SD 1.x, 2.x and tiny UNets;
* :func:`unet_state_dict_to_diffusers`: a UNet state dict in diffusers' key names;
* :func:`lora_targets`: every layer a LoRA may change in a model, under each name a file may use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, UNetModel, Upsample
from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder
from ldm.modules.lora.files import LoraError

UNET, TEXT_ENCODER = "unet", "text_encoder"
COMPONENT_NAMES = {UNET: "UNet", TEXT_ENCODER: "text encoder"}

# Inside a res block: ldm child -> diffusers ResnetBlock2D child.
_RESNET_PARTS = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# Outside the blocks: ldm module -> diffusers module.
_UNET_ENDS = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
              "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
# transformers' CLIP encoder layer child -> open_clip residual block child (SD 2.x text encoder).
_OPENCLIP_PARTS = {"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
_PACKED_QKV = ("q_proj", "k_proj", "v_proj")  # rows of in_proj_weight, in this order (torch's MHA packing)
_TEXT_MODEL = "text_model."


# ---------------------------------------------------------------------------------------------
# UNet: ldm <-> diffusers names
# ---------------------------------------------------------------------------------------------
def _unet_block_names(unet: UNetModel) -> Iterator[Tuple[str, nn.Module, str]]:
    """(ldm path, module, diffusers path) of each res block, spatial transformer and resampler."""
    level, index = 0, 0
    for i, block in enumerate(unet.input_blocks):
        if i == 0:
            continue
        if isinstance(block[0], Downsample):
            yield f"input_blocks.{i}.0", block[0], f"down_blocks.{level}.downsamplers.0"
            level, index = level + 1, 0
            continue
        yield from _level_parts(f"input_blocks.{i}", block, f"down_blocks.{level}", index)
        index += 1
    resnets = 0
    for j, part in enumerate(unet.middle_block):
        if isinstance(part, ResBlock):
            yield f"middle_block.{j}", part, f"mid_block.resnets.{resnets}"
            resnets += 1
        elif isinstance(part, SpatialTransformer):
            yield f"middle_block.{j}", part, "mid_block.attentions.0"
    level, index = 0, 0
    for i, block in enumerate(unet.output_blocks):
        yield from _level_parts(f"output_blocks.{i}", block, f"up_blocks.{level}", index)
        if any(isinstance(part, Upsample) for part in block):
            level, index = level + 1, 0
        else:
            index += 1


def _level_parts(ldm_prefix: str, block: nn.Module, level_prefix: str, index: int):
    for j, part in enumerate(block):
        if isinstance(part, ResBlock):
            yield f"{ldm_prefix}.{j}", part, f"{level_prefix}.resnets.{index}"
        elif isinstance(part, SpatialTransformer):
            yield f"{ldm_prefix}.{j}", part, f"{level_prefix}.attentions.{index}"
        elif isinstance(part, Upsample):
            yield f"{ldm_prefix}.{j}", part, f"{level_prefix}.upsamplers.0"


def _inner_name(module: nn.Module, inner: str) -> str:
    """A child's name inside a block, as diffusers calls it."""
    if isinstance(module, ResBlock):
        return next((new + inner[len(old):] for old, new in _RESNET_PARTS.items()
                     if inner == old or inner.startswith(old + ".")), inner)
    if isinstance(module, Downsample) and inner == "op":
        return "conv"
    return inner


def unet_diffusers_names(unet: UNetModel) -> Dict[str, str]:
    """ldm module path -> diffusers ``UNet2DConditionModel`` module path, for every module of
    ``unet`` that holds weights and has a diffusers counterpart (SD 1.x/2.x layouts)."""
    names = {}
    for ldm_path, diffusers_path in _UNET_ENDS.items():
        if _has_module(unet, ldm_path):
            names[ldm_path] = diffusers_path
    for ldm_path, block, diffusers_path in _unet_block_names(unet):
        for inner, module in block.named_modules():
            if inner and next(module.parameters(recurse=False), None) is not None:
                names[f"{ldm_path}.{inner}"] = f"{diffusers_path}.{_inner_name(block, inner)}"
    return names


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def unet_state_dict_to_diffusers(unet: UNetModel) -> Dict[str, torch.Tensor]:
    """``unet.state_dict()`` under diffusers' key names (the tensors themselves, not copies)."""
    names = unet_diffusers_names(unet)
    out = {}
    for key, value in unet.state_dict().items():
        module_path, _, tensor_name = key.rpartition(".")
        if module_path not in names:
            raise KeyError(f"{key} has no diffusers counterpart")
        out[f"{names[module_path]}.{tensor_name}"] = value
    return out


# ---------------------------------------------------------------------------------------------
# Targets: the layers a LoRA changes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraTarget:
    """One layer a LoRA may change. ``module`` is a Linear or Conv2d whose output gets the LoRA
    term added (``tensor`` None), or a module whose weight ``tensor`` gets ``up @ down`` added to
    its ``rows`` (all rows when None): OpenCLIP's packed q/k/v projection, and attention output
    projections that ``nn.MultiheadAttention`` uses without calling them."""
    path: str
    module: nn.Module
    tensor: Optional[str] = None
    rows: Optional[Tuple[int, int]] = None

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        """The shape of the weight a LoRA delta must have (out, in[, kh, kw])."""
        weight = getattr(self.module, self.tensor or "weight")
        shape = tuple(weight.shape)
        return shape if self.rows is None else (self.rows[1] - self.rows[0],) + shape[1:]


def find_lora_components(model: nn.Module) -> Dict[str, Tuple[str, nn.Module]]:
    """The UNet and the text encoder in ``model`` (a LatentDiffusion, or one of them alone):
    component -> (path in the model, module). A model with two of either is refused."""
    found: Dict[str, List[Tuple[str, nn.Module]]] = {UNET: [], TEXT_ENCODER: []}
    for path, module in model.named_modules():
        if isinstance(module, UNetModel):
            found[UNET].append((path, module))
        elif isinstance(module, (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder)):
            found[TEXT_ENCODER].append((path, module))
    for component, hits in found.items():
        if len(hits) > 1:
            raise LoraError(f"the model holds {len(hits)} {COMPONENT_NAMES[component]}s "
                            f"({', '.join(p or 'the model' for p, _ in hits)}); apply the LoRA to one of them")
    return {component: hits[0] for component, hits in found.items() if hits}


def lora_targets(model: nn.Module) -> Dict[str, Dict[str, LoraTarget]]:
    """component -> {name: target}: each layer under every dotted name a LoRA file may give it
    (diffusers or transformers names, with and without ``text_model.``, and our own ldm paths for
    the UNet). kohya names are these with ``_`` for ``.``."""
    tables = {}
    for component, (prefix, module) in find_lora_components(model).items():
        where = f"{prefix}." if prefix else ""
        if component == UNET:
            tables[component] = _unet_targets(module, where)
        elif isinstance(module, FrozenCLIPEmbedder):
            tables[component] = _clip_text_targets(module, where)
        else:
            tables[component] = _openclip_text_targets(module, where)
    return tables


def _is_lora_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _unet_targets(unet: UNetModel, where: str) -> Dict[str, LoraTarget]:
    diffusers = unet_diffusers_names(unet)
    table = {}
    for path, module in unet.named_modules():
        if _is_lora_layer(module):
            target = LoraTarget(where + path, module)
            table[path] = target
            if path in diffusers:
                table[diffusers[path]] = target
    return table


def _with_and_without_text_model(table: Dict[str, LoraTarget]) -> Dict[str, LoraTarget]:
    """Files written with transformers >= 5 name the text encoder without its ``text_model.`` level."""
    out = dict(table)
    out.update({name[len(_TEXT_MODEL):]: target for name, target in table.items() if name.startswith(_TEXT_MODEL)})
    return out


def _clip_text_targets(encoder: FrozenCLIPEmbedder, where: str) -> Dict[str, LoraTarget]:
    """SD 1.x: transformers' CLIPTextModel itself (laid out with its ``text_model`` level)."""
    table = {name: LoraTarget(f"{where}transformer.{name}", module)
             for name, module in encoder.transformer.named_modules() if _is_lora_layer(module)}
    return _with_and_without_text_model(table)


def _openclip_text_targets(encoder: FrozenOpenCLIPEmbedder, where: str) -> Dict[str, LoraTarget]:
    """SD 2.x: transformers' names (as kohya and diffusers convert the OpenCLIP tower) onto the
    OpenCLIP residual blocks; q/k/v are row blocks of the packed ``in_proj_weight``."""
    table = {}
    for i, block in enumerate(encoder.model.transformer.resblocks):
        layer, path = f"{_TEXT_MODEL}encoder.layers.{i}", f"{where}model.transformer.resblocks.{i}"
        width = block.attn.in_proj_weight.shape[1]
        for n, projection in enumerate(_PACKED_QKV):
            table[f"{layer}.self_attn.{projection}"] = LoraTarget(
                f"{path}.attn.in_proj_weight[{projection[0]}]", block.attn, "in_proj_weight",
                (n * width, (n + 1) * width))
        for hf_name, ours in _OPENCLIP_PARTS.items():
            module = block.get_submodule(ours)
            in_attention = ours.startswith("attn.")
            table[f"{layer}.{hf_name}"] = LoraTarget(f"{path}.{ours}", module, "weight" if in_attention else None)
    return _with_and_without_text_model(table)


def underscored(table: Mapping[str, LoraTarget]) -> Dict[str, LoraTarget]:
    """``table`` under kohya's names: dots replaced by underscores."""
    return {name.replace(".", "_"): target for name, target in table.items()}
