"""DPT's transformer encoders (original ``midas/vit.py``): a ViT whose tokens from four blocks
(or, for the hybrid, two ResNet stages and two blocks) are reassembled into image-like feature
maps at 1/4, 1/8, 1/16 and 1/32 of the input (Ranftl et al. 2021, "Vision Transformers for Dense
Prediction", section 3 "Reassemble"). Parameter names as the original: ``model.*`` is the timm
ViT, ``act_postprocess{1..4}`` the reassemble operations (readout, transpose, unflatten,
1x1 projection, resampling)."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ldm.modules.midas.midas.backbones.resnetv2 import ResNetV2
from ldm.modules.midas.midas.backbones.vision_transformer import VisionTransformer, ViTSpec


class Slice(nn.Module):
    """Readout "ignore": drop the class token."""

    def __init__(self, start_index: int = 1):
        super().__init__()
        self.start_index = start_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start_index:]


class AddReadout(nn.Module):
    """Readout "add": add the class token to every patch token."""

    def __init__(self, start_index: int = 1):
        super().__init__()
        self.start_index = start_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        readout = (x[:, 0] + x[:, 1]) / 2 if self.start_index == 2 else x[:, 0]  # 2: DeiT's distillation token
        return x[:, self.start_index:] + readout.unsqueeze(1)


class ProjectReadout(nn.Module):
    """Readout "project": concatenate the class token to every patch token, then Linear + GELU."""

    def __init__(self, in_features: int, start_index: int = 1):
        super().__init__()
        self.start_index = start_index
        self.project = nn.Sequential(nn.Linear(2 * in_features, in_features), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        readout = x[:, 0].unsqueeze(1).expand_as(x[:, self.start_index:])
        return self.project(torch.cat((x[:, self.start_index:], readout), -1))


class Transpose(nn.Module):
    def __init__(self, dim0: int, dim1: int):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)


def get_readout_oper(vit_features: int, features: Sequence[int], use_readout: str,
                     start_index: int = 1) -> List[nn.Module]:
    """One readout operation per reassembled feature map."""
    if use_readout == "ignore":
        return [Slice(start_index) for _ in features]
    if use_readout == "add":
        return [AddReadout(start_index) for _ in features]
    if use_readout == "project":
        return [ProjectReadout(vit_features, start_index) for _ in features]
    raise ValueError(f"readout must be 'ignore', 'add' or 'project', got {use_readout!r}")


# The sizes of each DPT backbone: the timm ViT, the blocks tapped, the reassembled widths.
VIT_SPECS = {
    "vitl16_384": ViTSpec(embed_dim=1024, depth=24, num_heads=16),
    "vitb16_384": ViTSpec(),
    "vitb_rn50_384": ViTSpec(),
}
REASSEMBLE_FEATURES = {"vitl16_384": (256, 512, 1024, 1024), "vitb16_384": (96, 192, 384, 768)}
HYBRID_RESNET = {"stem_width": 64, "stage_widths": (256, 512, 1024), "stage_depths": (3, 4, 9)}
VIT_OPTIONS = tuple(f.name for f in fields(ViTSpec))
BACKBONE_OPTIONS = VIT_OPTIONS + tuple(HYBRID_RESNET) + ("features",)


def _split_options(backbone: str, options: Optional[Mapping]) -> Tuple[ViTSpec, dict, Optional[Sequence[int]]]:
    """(ViT sizes, hybrid ResNet sizes, reassembled widths) of ``backbone`` with ``options`` applied:
    ``ViTSpec`` fields, ``stem_width``/``stage_widths``/``stage_depths`` (hybrid), ``features``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown backbone option(s) {unknown} for {backbone}; known: {list(BACKBONE_OPTIONS)}")
    spec = replace(VIT_SPECS[backbone], **{k: options.pop(k) for k in list(options) if k in VIT_OPTIONS})
    resnet = {**HYBRID_RESNET, **{k: options.pop(k) for k in list(options) if k in HYBRID_RESNET}}
    return spec, resnet, options.get("features")


class DPTViTEncoder(nn.Module):
    """The original's ``pretrained`` module: ``model`` (timm ViT) and ``act_postprocess1..4``.

    Plain ViT: the tokens after blocks ``hooks`` are reassembled at 1/4 (1x1 projection and a
    4x4/4 transposed convolution), 1/8 (2x2/2 transposed convolution), 1/16 (projection only) and
    1/32 (3x3/2 convolution). Hybrid: the first two maps are the ResNet's stage 1 and 2 outputs
    as they are (identity post-processing); the last two come from blocks ``hooks[2:]``."""

    def __init__(self, model: VisionTransformer, features: Sequence[int], hooks: Sequence[int],
                 use_readout: str = "ignore", hybrid: bool = False, start_index: int = 1):
        super().__init__()
        vit_features, grid = model.spec.embed_dim, model.spec.img_size // model.spec.patch_size
        self.model = model
        self.hooks = list(hooks)
        self.hybrid = hybrid
        self.features = tuple(features)
        readout_oper = get_readout_oper(vit_features, features, use_readout, start_index)

        def reassemble(index: int, *resample: nn.Module) -> nn.Sequential:
            return nn.Sequential(readout_oper[index], Transpose(1, 2), nn.Unflatten(2, torch.Size([grid, grid])),
                                 nn.Conv2d(vit_features, features[index], kernel_size=1, stride=1, padding=0),
                                 *resample)

        if hybrid:
            self.act_postprocess1 = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
            self.act_postprocess2 = nn.Sequential(nn.Identity(), nn.Identity(), nn.Identity())
        else:
            self.act_postprocess1 = reassemble(0, nn.ConvTranspose2d(features[0], features[0], kernel_size=4,
                                                                     stride=4, padding=0, bias=True))
            self.act_postprocess2 = reassemble(1, nn.ConvTranspose2d(features[1], features[1], kernel_size=2,
                                                                     stride=2, padding=0, bias=True))
        self.act_postprocess3 = reassemble(2)
        self.act_postprocess4 = reassemble(3, nn.Conv2d(features[3], features[3], kernel_size=3, stride=2,
                                                        padding=1))
        self.model.start_index = start_index

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, height, width = x.shape
        taps = self.hooks[2:] if self.hybrid else self.hooks
        _, stage_outputs, tapped = self.model.forward_flex(x, taps)
        layers = stage_outputs[:2] + tapped if self.hybrid else tapped
        patch_h, patch_w = self.model.patch_size[1], self.model.patch_size[0]
        out = []
        for layer, postprocess in zip(layers, (self.act_postprocess1, self.act_postprocess2,
                                               self.act_postprocess3, self.act_postprocess4)):
            layer = postprocess[0:2](layer)
            if layer.ndim == 3:  # tokens -> (B, C, H / patch, W / patch)
                layer = layer.unflatten(2, (height // patch_h, width // patch_w))
            out.append(postprocess[3:](layer))
        return out[0], out[1], out[2], out[3]


def forward_vit(pretrained: DPTViTEncoder, x: torch.Tensor):
    """The four reassembled feature maps of ``x`` (original name)."""
    return pretrained(x)


def _make_vit_encoder(backbone: str, hooks: Sequence[int], use_readout: str, options: Optional[Mapping],
                      hybrid: bool) -> DPTViTEncoder:
    spec, resnet, features = _split_options(backbone, options)
    if hybrid:
        stem = ResNetV2(layers=resnet["stage_depths"], widths=resnet["stage_widths"], stem_width=resnet["stem_width"])
        model = VisionTransformer(spec, hybrid_backbone=stem)
        features = features or (resnet["stage_widths"][0], resnet["stage_widths"][1], spec.embed_dim, spec.embed_dim)
    else:
        model = VisionTransformer(spec)
        features = features or REASSEMBLE_FEATURES[backbone]
    if len(hooks) != 4 or max(hooks) >= spec.depth:
        raise ValueError(f"hooks must name 4 of the {spec.depth} transformer blocks, got {list(hooks)}")
    return DPTViTEncoder(model, features, hooks, use_readout, hybrid=hybrid)


def _make_pretrained_vitl16_384(use_readout: str = "ignore", hooks: Optional[Sequence[int]] = None,
                                options: Optional[Mapping] = None) -> DPTViTEncoder:
    """DPT-Large: ViT-L/16 at 384, blocks 5, 11, 17, 23 reassembled to 256, 512, 1024, 1024 channels."""
    return _make_vit_encoder("vitl16_384", hooks or [5, 11, 17, 23], use_readout, options, hybrid=False)


def _make_pretrained_vitb16_384(use_readout: str = "ignore", hooks: Optional[Sequence[int]] = None,
                                options: Optional[Mapping] = None) -> DPTViTEncoder:
    """DPT-Base: ViT-B/16 at 384, blocks 2, 5, 8, 11 reassembled to 96, 192, 384, 768 channels."""
    return _make_vit_encoder("vitb16_384", hooks or [2, 5, 8, 11], use_readout, options, hybrid=False)


def _make_pretrained_vitb_rn50_384(use_readout: str = "ignore", hooks: Optional[Sequence[int]] = None,
                                   options: Optional[Mapping] = None) -> DPTViTEncoder:
    """DPT-Hybrid: ResNet-50 stages 1-2 (256, 512 channels) and ViT-B/16 blocks 8, 11 (768, 768)."""
    return _make_vit_encoder("vitb_rn50_384", hooks or [0, 1, 8, 11], use_readout, options, hybrid=True)
