"""Our DPT depth models as transformers' ``DPTForDepthEstimation`` (an independent
implementation, used to check the numbers): the matching ``DPTConfig`` and the renaming of our
(the original MiDaS) state dict to transformers' names. transformers is imported only here and
only when a config is asked for; it is no dependency of the depth models themselves."""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

import torch

from ldm.modules.midas.midas.dpt_depth import DPTDepthModel

# (our pattern, transformers' name) pairs; the first that matches renames a key.
_COMMON_RULES: List[Tuple[str, str]] = [
    (r"pretrained\.model\.cls_token", "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", "dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.(weight|bias)", r"dpt.encoder.layer.\1.layernorm_before.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"dpt.encoder.layer.\1.attention.output.dense.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.(weight|bias)", r"dpt.encoder.layer.\1.layernorm_after.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"dpt.encoder.layer.\1.intermediate.dense.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"dpt.encoder.layer.\1.output.dense.\2"),
    (r"pretrained\.model\.norm\.(weight|bias)", r"dpt.layernorm.\1"),
    (r"pretrained\.act_postprocess(\d)\.0\.project\.0\.(weight|bias)",
     lambda m: f"neck.reassemble_stage.readout_projects.{int(m[1]) - 1}.0.{m[2]}"),
    (r"pretrained\.act_postprocess(\d)\.3\.(weight|bias)",
     lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.projection.{m[2]}"),
    (r"pretrained\.act_postprocess(\d)\.4\.(weight|bias)",
     lambda m: f"neck.reassemble_stage.layers.{int(m[1]) - 1}.resize.{m[2]}"),
    (r"scratch\.layer(\d)_rn\.weight", lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (r"scratch\.refinenet(\d)\.out_conv\.(weight|bias)",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection.{m[2]}"),
    (r"scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.(weight|bias)",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}"),
    (r"scratch\.output_conv\.(0|2|4)\.(weight|bias)", r"head.head.\1.\2"),
]
_HYBRID_RULES: List[Tuple[str, str]] = [
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.weight",
     "dpt.embeddings.backbone.bit.embedder.convolution.weight"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.(weight|bias)",
     r"dpt.embeddings.backbone.bit.embedder.norm.\1"),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)",
     r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers.\2.\3"),
    (r"pretrained\.model\.patch_embed\.proj\.(weight|bias)", r"dpt.embeddings.projection.\1"),
]
_VIT_RULES: List[Tuple[str, str]] = [
    (r"pretrained\.model\.patch_embed\.proj\.(weight|bias)", r"dpt.embeddings.patch_embeddings.projection.\1"),
]
# The ViT's ImageNet classifier: part of the original layout, unused by DPT, absent in transformers.
_UNUSED = re.compile(r"pretrained\.model\.head\.(weight|bias)")
_QKV = re.compile(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def _rename(key: str, rules: List[Tuple[str, object]]) -> str:
    for pattern, target in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return target(match) if callable(target) else match.expand(target)
    raise KeyError(f"no transformers name for DPT key {key}")


def to_transformers_dpt(state_dict: Mapping[str, torch.Tensor], hybrid: bool) -> Dict[str, torch.Tensor]:
    """A ``DPTDepthModel`` state dict (the original MiDaS names, no ``depth_model.model.``
    prefix) under ``DPTForDepthEstimation``'s names: the fused qkv projection split into query,
    key and value; the ViT's unused ImageNet head dropped. Raises KeyError for a key it cannot place."""
    rules = (_HYBRID_RULES if hybrid else _VIT_RULES) + _COMMON_RULES
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _UNUSED.fullmatch(key):
            continue
        qkv = _QKV.fullmatch(key)
        if qkv:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"dpt.encoder.layer.{qkv[1]}.attention.attention.{name}.{qkv[2]}"] = part
            continue
        out[_rename(key, rules)] = value
    return out


def transformers_dpt_config(model: DPTDepthModel):
    """The ``transformers.DPTConfig`` of the same architecture as ``model`` (DPT-Hybrid or a
    plain-ViT DPT with "project" readout, at any size)."""
    from transformers import DPTConfig

    encoder = model.pretrained
    spec = encoder.model.spec
    features = model.scratch.layer1_rn.out_channels
    common = dict(hidden_size=spec.embed_dim, num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
                  intermediate_size=int(spec.embed_dim * spec.mlp_ratio), hidden_act="gelu", layer_norm_eps=1e-6,
                  image_size=spec.img_size, patch_size=spec.patch_size, qkv_bias=True, readout_type="project",
                  backbone_out_indices=list(encoder.hooks), neck_hidden_sizes=list(encoder.features),
                  fusion_hidden_size=features, use_batch_norm_in_fusion_residual=False)
    if not encoder.hybrid:
        return DPTConfig(is_hybrid=False, reassemble_factors=[4, 2, 1, 0.5], **common)
    resnet = encoder.model.patch_embed.backbone
    widths = [stage.blocks[-1].conv3.out_channels for stage in resnet.stages]
    grid = spec.img_size // spec.patch_size
    backbone = dict(embedding_size=resnet.stem.conv.out_channels, hidden_sizes=widths,
                    depths=[len(stage.blocks) for stage in resnet.stages], global_padding="same",
                    layer_type="bottleneck", embedding_dynamic_padding=True,
                    out_features=[f"stage{i + 1}" for i in range(len(widths))])
    return DPTConfig(is_hybrid=True, reassemble_factors=[1, 1, 1, 0.5], backbone_config=backbone,
                     backbone_featmap_shape=[1, widths[-1], grid, grid], **common)


__all__ = ["to_transformers_dpt", "transformers_dpt_config"]
