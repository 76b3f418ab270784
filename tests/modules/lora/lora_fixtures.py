"""Tiny SD-shaped models in ldm and in diffusers/transformers holding the same weights, and random
LoRA files for them written in kohya-ss and older diffusers key formats, for the LoRA tests."""
import re

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from safetensors.torch import save_file

from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.encoders.openclip import CLIPArch
from ldm.util import instantiate_from_config

UNET_PREFIX = "model.diffusion_model."
# SD 1.x layout (1x1 conv projections, attention on all but the last level) and SD 2.x layout
# (linear projections, heads of 32 channels), two res blocks per level so that indices matter.
SD1_LIKE = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1, 2],
                num_res_blocks=2, channel_mult=[1, 2, 2], num_heads=2, use_spatial_transformer=True,
                transformer_depth=1, context_dim=32, legacy=False)
SD2_LIKE = {**{k: v for k, v in SD1_LIKE.items() if k != "num_heads"}, "num_head_channels": 32,
            "use_linear_in_transformer": True, "context_dim": 48}
TINY_OPENCLIP = CLIPArch(embed_dim=16, text_width=32, text_heads=4, text_layers=3, vision_width=32, vision_layers=2,
                         vision_heads=4, patch_size=8, image_size=32)


def perturb(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Move every parameter off its initial value (zero-initialised layers would hide errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return module.eval()


def tiny_unet(params: dict) -> UNetModel:
    config = OmegaConf.create({"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": params})
    return perturb(instantiate_from_config(config))


def diffusers_unet_config(params: dict, unet: UNetModel) -> dict:
    """diffusers' UNet2DConditionModel config for an ldm UNet, by diffusers' own function."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    original_config = {"model": {"params": {"unet_config": {"params": dict(params)},
                                            "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2]}}}}}}
    checkpoint = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    return create_unet_diffusers_config_from_ldm(original_config, checkpoint, image_size=16)


def unet_inputs(params: dict, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 5, params["context_dim"], generator=generator)
    return x, torch.tensor([10, 900]), context


def clip_text_twin_from_openclip(encoder) -> nn.Module:
    """transformers' CLIPTextModel holding the weights of a tiny FrozenOpenCLIPEmbedder(layer=
    "penultimate"), converted by diffusers' own function (q/k/v split out of in_proj_weight); it
    has one layer fewer, as diffusers' SD 2.x text encoder has 23 of OpenCLIP's 24."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = TINY_OPENCLIP
    config = CLIPTextConfig(vocab_size=arch.vocab_size, hidden_size=arch.text_width,
                            intermediate_size=4 * arch.text_width, num_hidden_layers=arch.text_layers - 1,
                            num_attention_heads=arch.text_heads, max_position_embeddings=arch.context_length,
                            hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=arch.embed_dim)
    twin = CLIPTextModel(config).eval()
    checkpoint = {f"cond_stage_model.model.{k}": v for k, v in encoder.model.state_dict().items()}
    converted = convert_open_clip_checkpoint(twin, checkpoint)
    last = f"layers.{arch.text_layers - 1}."
    expected = twin.state_dict()
    weights = {}
    for key, value in converted.items():
        if last in key or key.startswith("text_projection"):
            continue
        weights[key if key in expected else key.replace("text_model.", "", 1)] = value
    twin.load_state_dict(weights, strict=True)
    return twin


def random_lora(shape_of, names, rank: int, generator: torch.Generator, std: float = 0.2):
    """(name, down, up) for each name; ``shape_of(name)`` is the target's (out, in[, kh, kw])."""
    for name in names:
        shape = shape_of(name)
        down = torch.randn((rank, shape[1]) + tuple(shape[2:]), generator=generator) * std
        up = torch.randn((shape[0], rank) + ((1, 1) if len(shape) == 4 else ()), generator=generator) * std
        yield name, down, up


def lora_layers_of(module: nn.Module, prefix: str = ""):
    """Names (with ``prefix``) and weight shapes of the Linear and Conv2d layers of a diffusers or
    transformers module."""
    return {prefix + name: tuple(m.weight.shape) for name, m in module.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def clip_text_layers(text_model: nn.Module):
    """The Linear layers of transformers' CLIPTextModel under the names kohya gives them (with the
    ``text_model.`` level transformers 4 had)."""
    layers = lora_layers_of(text_model)
    return {(name if name.startswith("text_model.") else "text_model." + name): shape for name, shape in layers.items()}


def write_kohya_lora(path, unet_layers: dict, text_layers: dict, seed: int = 1) -> str:
    """A kohya-ss file: every given layer, rank 4 (rank 3 for 3x3 convs, as kohya's conv_dim),
    alpha 2 for linear layers, 1.5 for convolutions and 3 for the text encoder."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, layers in (("lora_unet_", unet_layers), ("lora_te_", text_layers)):
        for name, shape in layers.items():
            rank = 3 if len(shape) == 4 and shape[2:] != (1, 1) else 4
            alpha = 3.0 if prefix == "lora_te_" else 1.5 if len(shape) == 4 else 2.0
            (_, down, up), = random_lora(layers.get, [name], rank, generator)
            key = prefix + name.replace(".", "_")
            tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(alpha)})
    save_file(tensors, str(path))
    return str(path)


def write_attn_procs_lora(path, unet_layers: dict, seed: int = 2) -> str:
    """The older diffusers format of attention processors: ``unet.<attention>.processor.
    to_q_lora.down.weight`` (to_q, to_k, to_v, to_out), no alpha."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in unet_layers:
        match = re.match(r"^(.*\.attn[12])\.(to_q|to_k|to_v|to_out)(\.0)?$", name)
        if match is None:
            continue
        (_, down, up), = random_lora(unet_layers.get, [name], 4, generator)
        stem = f"unet.{match.group(1)}.processor.{match.group(2)}_lora"
        tensors.update({f"{stem}.down.weight": down, f"{stem}.up.weight": up})
    save_file(tensors, str(path))
    return str(path)
