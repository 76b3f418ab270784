"""The files the Karlo prior needs, read safely and checked, each failure one line naming the file
and what it should be (:class:`KarloFileError`, a ``ValueError``):

* the prior's config (``configs/karlo/prior_1B_vit_l.yaml``);
* the prior's checkpoint (``prior-ckpt-step=01000000-of-01000000.ckpt``), tensors ``model.*``;
* ``ViT-L-14_stats.th``: the ``(mean, std)`` of CLIP ViT-L/14 image embeddings (a ``torch.save``d pair);
* CLIP ViT-L/14 weights: a state dict with OpenAI's names (``.safetensors`` / ``.pt``, e.g.
  converted once from OpenAI's ``ViT-L-14.pt``), or a transformers ``CLIPModel`` directory or
  weight file (``openai/clip-vit-large-patch14``), renamed here. OpenAI's ``ViT-L-14.pt`` itself is a
  TorchScript archive, which cannot be read without running its code: it is refused.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Dict, Mapping, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.modules.encoders.noise_augmentation import read_clip_stats as _read_embedding_stats
from ldm.modules.encoders.openclip import CLIPArch
from ldm.util import CheckpointError, compare_state_dict, in_cwd_or_repository, load_checkpoint

PRIOR_HPARAMS = ("text_ctx", "xf_width", "xf_layers", "xf_heads", "xf_final_ln", "clip_dim")
DIFFUSION_KEYS = ("steps", "learn_sigma", "sigma_small", "noise_schedule", "use_kl", "predict_xstart",
                  "rescale_learned_sigmas", "timestep_respacing")
CLIP_WEIGHTS_HELP = ("CLIP ViT-L/14 weights: a state dict with OpenAI's names (.safetensors/.pt) or a transformers "
                     "CLIPModel directory such as openai/clip-vit-large-patch14 (docs/KARLO.md)")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


class KarloFileError(CheckpointError):
    """A Karlo file that is missing or is not what it should be."""


def _require_file(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KarloFileError(f"{what} not found: {path}")
    return path


# -- config -----------------------------------------------------------------------------------
def read_prior_config(path: str) -> DictConfig:
    """The prior's YAML config, with every ``model.hparams`` and ``diffusion`` entry the prior reads
    (a relative path not found from the working directory is looked up in the repository)."""
    path = _require_file(in_cwd_or_repository(path), "Karlo prior config (configs/karlo/prior_1B_vit_l.yaml)")
    try:
        config = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise KarloFileError(f"{path} is not a readable YAML file ({str(err).splitlines()[0]}); expected a "
                             "Karlo prior config such as configs/karlo/prior_1B_vit_l.yaml") from None
    return check_prior_config(config, path)


def check_prior_config(config, source: str = "the prior config") -> DictConfig:
    """``config`` as a DictConfig, after checking it has the entries the prior reads."""
    config = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    wanted = [f"model.hparams.{k}" for k in PRIOR_HPARAMS] + [f"diffusion.{k}" for k in DIFFUSION_KEYS]
    missing = [key for key in wanted if OmegaConf.select(config, key, default=None) is None]
    if missing:
        raise KarloFileError(f"{source} is not a Karlo prior config: it lacks {', '.join(missing[:3])}"
                             f"{' and more' if len(missing) > 3 else ''} (see configs/karlo/prior_1B_vit_l.yaml)")
    return config


# -- the prior's checkpoint -------------------------------------------------------------------
def read_prior_state_dict(path: str, prior: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The tensors of a prior checkpoint, as float32, after checking that they are exactly the
    state dict of ``prior`` (which may live on the meta device)."""
    what = "Karlo prior checkpoint (prior-ckpt-step=01000000-of-01000000.ckpt)"
    path = _require_file(path, what)
    try:
        state_dict, _ = load_checkpoint(path)
    except CheckpointError as err:
        raise KarloFileError(f"{err} (expected the {what})") from None
    report = compare_state_dict(prior, state_dict)
    if not report.ok:
        problems = [(f"{sum(map(len, found.values()))} tensors {title}", next(iter(found.values()))[0])
                    for title, found in (("missing", report.missing), ("not used by the prior", report.unexpected),
                                         ("of the wrong shape", report.mismatched),
                                         ("of a non-float type", report.wrong_type)) if found]
        said = "; ".join(f"{count} (e.g. {example})" for count, example in problems)
        raise KarloFileError(f"{path} does not fit the prior config: {said} (expected the {what} and its config "
                             "configs/karlo/prior_1B_vit_l.yaml)")
    return {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}


# -- CLIP image-embedding statistics ----------------------------------------------------------
def read_clip_stats(path: str, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the CLIP image embeddings, each ``[dim]`` float32 (``ViT-L-14_stats.th``),
    read by the reader unCLIP's noise augmentation uses; errors name the file Karlo needs."""
    path = _require_file(path, "CLIP statistics file (ViT-L-14_stats.th)")
    try:
        return _read_embedding_stats(path, dim)
    except CheckpointError as err:
        raise KarloFileError(f"{err} (expected ViT-L-14_stats.th of the Karlo v1.0.alpha release)") from None


# -- CLIP weights -----------------------------------------------------------------------------
def is_torchscript_archive(path: str) -> bool:
    """A ``torch.jit.save`` archive (a zip with ``code/`` and ``constants.pkl``), like OpenAI's ``ViT-L-14.pt``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def read_clip_weights(path: str) -> Tuple[Dict[str, torch.Tensor], CLIPArch]:
    """OpenAI-named CLIP tensors and the architecture they describe, from a state-dict file or a
    transformers ``CLIPModel`` directory or weight file."""
    path = os.fspath(path)
    config_heads: Tuple[Optional[int], Optional[int]] = (None, None)
    if os.path.isdir(path):
        config_heads = _transformers_heads(path)
        path = _transformers_weight_file(path)
    path = _require_file(path, CLIP_WEIGHTS_HELP)
    if is_torchscript_archive(path):
        raise KarloFileError(f"{path} is a TorchScript archive (OpenAI's ViT-L-14.pt), which cannot be read safely: "
                             "convert it once to a state dict, or pass openai/clip-vit-large-patch14 (docs/KARLO.md)")
    try:
        state_dict, _ = load_checkpoint(path)
    except CheckpointError as err:
        raise KarloFileError(f"{err} (expected {CLIP_WEIGHTS_HELP})") from None
    if "text_model.embeddings.token_embedding.weight" in state_dict:
        state_dict = clip_state_dict_from_transformers(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_METADATA_KEYS}
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"):
        if key not in state_dict:
            raise KarloFileError(f"{path} has no {key}: it is not {CLIP_WEIGHTS_HELP}")
    return state_dict, clip_arch_from_state_dict(state_dict, *config_heads)


def _transformers_weight_file(folder: str) -> str:
    for name in HF_WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise KarloFileError(f"{folder} holds none of {', '.join(HF_WEIGHT_FILES)}: expected {CLIP_WEIGHTS_HELP}")


def _transformers_heads(folder: str) -> Tuple[Optional[int], Optional[int]]:
    """(text heads, vision heads) from a transformers ``config.json``, where there is one."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return None, None
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as err:
        raise KarloFileError(f"{config_path} is not a readable transformers config ({err})") from None
    return ((config.get("text_config") or {}).get("num_attention_heads"),
            (config.get("vision_config") or {}).get("num_attention_heads"))


def clip_arch_from_state_dict(state_dict: Mapping[str, torch.Tensor], text_heads: Optional[int] = None,
                              vision_heads: Optional[int] = None) -> CLIPArch:
    """The OpenAI CLIP ViT architecture whose tensors these are (as OpenAI's ``build_model`` reads
    it: 64-wide attention heads unless told otherwise)."""
    width = state_dict["ln_final.weight"].shape[0]
    layers = {key.split(".")[2] for key in state_dict if key.startswith("transformer.resblocks.")}
    vision = dict(vision_width=0, vision_layers=0, vision_heads=1, patch_size=1, image_size=224)
    if "visual.conv1.weight" in state_dict:
        conv = state_dict["visual.conv1.weight"]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        blocks = {key.split(".")[3] for key in state_dict if key.startswith("visual.transformer.resblocks.")}
        vision = dict(vision_width=conv.shape[0], vision_layers=len(blocks),
                      vision_heads=vision_heads or max(1, conv.shape[0] // 64), patch_size=conv.shape[-1],
                      image_size=conv.shape[-1] * grid)
    return CLIPArch(embed_dim=state_dict["text_projection"].shape[1], text_width=width,
                    text_heads=text_heads or max(1, width // 64), text_layers=len(layers),
                    context_length=state_dict["positional_embedding"].shape[0],
                    vocab_size=state_dict["token_embedding.weight"].shape[0], quick_gelu=True, openai_layout=True,
                    **vision)


# transformers CLIPModel names -> OpenAI CLIP names
_TRANSFORMERS_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSFORMERS_PROJECTIONS = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_TRANSFORMERS_TOWERS = {"text_model": "transformer", "vision_model": "visual.transformer"}
_TRANSFORMERS_BLOCK_PARTS = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_LAYER_KEY = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def clip_state_dict_from_transformers(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers ``CLIPModel`` state dict under OpenAI CLIP's names: separate q/k/v
    projections packed into ``in_proj_weight``/``in_proj_bias`` (q, k, v order), the projection
    matrices transposed (``nn.Linear`` stores ``[out, in]``, OpenAI ``[in, out]``), position ids
    dropped. Keys it does not know are kept as they are (a strict load then names them)."""
    out: Dict[str, torch.Tensor] = {}
    packed: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        layer = _LAYER_KEY.match(key)
        if key.endswith("position_ids"):
            continue
        if key in _TRANSFORMERS_NAMES:
            out[_TRANSFORMERS_NAMES[key]] = value
        elif key in _TRANSFORMERS_PROJECTIONS:
            out[_TRANSFORMERS_PROJECTIONS[key]] = value.t().contiguous()
        elif layer:
            tower, index, part, kind = layer.groups()
            prefix = f"{_TRANSFORMERS_TOWERS[tower]}.resblocks.{index}"
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                packed.setdefault(f"{prefix}.attn.in_proj_{kind}", {})[part[-6]] = value
            else:
                out[f"{prefix}.{_TRANSFORMERS_BLOCK_PARTS.get(part, part)}.{kind}"] = value
        else:
            out[key] = value
    for key, parts in packed.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise KarloFileError(f"the transformers CLIP weights lack part of {key} (have {sorted(parts)} of q, k, v)")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out

