"""Which model a script runs, and loading it: default config/checkpoint per task (the one place to
change them), what a config says about its model before building it, and turning loader errors
into one-line messages with a hint at the config that would fit."""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.inference.errors import UsageError
from ldm.util import (
    CheckpointError,
    CheckpointMismatchError,
    UntrustedConfigError,
    check_untrusted_yaml,
    checkpoint_tensor_shapes,
    first_line,
    in_cwd_or_repository,
    load_model_from_config,
    non_model_targets,
)

SD_CONFIGS = "configs/stable-diffusion"

# Default (config, checkpoint) of each script: the small shapes-world models shipped in
# checkpoints/ (docs/SHAPES.md), so every script runs with no download and no flag.
DEFAULT_MODELS: Dict[str, Tuple[str, str]] = {
    "txt2img": ("checkpoints/shapes-txt2img.yaml", "checkpoints/shapes-txt2img.safetensors"),
    "img2img": ("checkpoints/shapes-txt2img.yaml", "checkpoints/shapes-txt2img.safetensors"),
    "edit": ("checkpoints/shapes-txt2img.yaml", "checkpoints/shapes-txt2img.safetensors"),
    "inpaint": ("checkpoints/shapes-inpainting.yaml", "checkpoints/shapes-inpainting.safetensors"),
    "depth2img": ("checkpoints/shapes-depth.yaml", "checkpoints/shapes-depth.safetensors"),
    "upscale": ("checkpoints/shapes-x4-upscaler.yaml", "checkpoints/shapes-x4-upscaler.safetensors"),
    # No shapes unCLIP model ships: the default is the public SD 2.1 unCLIP-L file, put by the user in checkpoints/.
    "unclip": (f"{SD_CONFIGS}/v2-1-stable-unclip-l-inference.yaml", "checkpoints/sd21-unclip-l.ckpt"),
    "unconditional": ("checkpoints/shapes-pixel-ddpm.yaml", "checkpoints/shapes-pixel-ddpm.safetensors"),
    "class": ("checkpoints/shapes-class-conditional.yaml", "checkpoints/shapes-class-conditional.safetensors"),
}

# Task model classes by the last part of their config target; anything else is text-to-image.
_TASK_CLASSES = {
    "LatentInpaintDiffusion": "inpaint",
    "LatentDepth2ImageDiffusion": "depth",
    "LatentUpscaleDiffusion": "upscale",
    "ImageEmbeddingConditionedLatentDiffusion": "unclip",
}
# Models without a text encoder, by their conditioning stage (the pixel-space DDPM has none).
_UNCONDITIONAL_STAGE = "__is_unconditional__"
_CLASS_STAGE = "ClassEmbedder"
CLASS_EMBEDDER_DEFAULT_CLASSES = 1000  # ClassEmbedder's n_classes default
# Configs that fit a checkpoint, by the UNet's input channels (4 + concatenated conditioning).
_CONFIG_BY_UNET_INPUT = {9: "v2-inpainting-inference.yaml", 5: "v2-midas-inference.yaml",
                         7: "x4-upscaling.yaml"}
# unCLIP configs by the width of the image embedding (the embedder's projection, ``embedder.model.visual.proj``).
_UNCLIP_CONFIG_BY_EMBEDDING = {768: "v2-1-stable-unclip-l-inference.yaml", 1024: "v2-1-stable-unclip-h-inference.yaml"}
# The latent-diffusion BSR super-resolution model: 3 latent + 3 low-resolution image channels, no
# cross-attention (a checkpoint given alone with that UNet gets this config).
LDM_SR_CONFIG = "configs/latent-diffusion/bsr_sr.yaml"
LDM_SR_UNET_INPUT = 6
SD2_CONTEXT_DIM = 1024
SD1_CONTEXT_DIM = 768
HASH_LENGTH = 10


def default_model_paths(task: str) -> Tuple[str, str]:
    """The (config, checkpoint) a script uses when the user gives neither."""
    return DEFAULT_MODELS[task]


class ModelPaths(NamedTuple):
    """The config and checkpoint a run uses. ``config_trusted`` is False for a config the user did
    not name, found beside the checkpoint: it may build only model classes (docs/SECURITY.md)."""
    config: str
    ckpt: str
    config_trusted: bool = True


def choose_model_paths(task: str, config: Optional[str], ckpt: Optional[str]) -> ModelPaths:
    """``--config`` and ``--ckpt`` completed: neither given -> the task's shipped shapes model;
    only ``--ckpt`` -> the ``<name>.yaml`` beside it, else the original config its layout fits;
    only ``--config`` -> an error, unless it is the task's default config."""
    _refuse_swapped_paths(config, ckpt)
    default_config, default_ckpt = default_model_paths(task)
    if config is None and ckpt is None:
        return ModelPaths(in_cwd_or_repository(default_config), in_cwd_or_repository(default_ckpt))
    if ckpt is None:
        if _same_file(config, default_config):
            return ModelPaths(config, in_cwd_or_repository(default_ckpt))
        raise UsageError("no checkpoint given: pass --ckpt PATH (a .ckpt or .safetensors file that fits --config)")
    if config is not None:
        return ModelPaths(config, ckpt)
    paths = config_for_checkpoint(ckpt)
    if paths.config_trusted:
        print(f"--config not given: using {paths.config}, which fits {ckpt}", file=sys.stderr)
    else:
        print(f"--config not given: using {paths.config}, found beside {ckpt}; as you did not name it, it may "
              "build only ldm model classes", file=sys.stderr)
    return paths


CONFIG_SUFFIXES = (".yaml", ".yml")
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def _refuse_swapped_paths(config: Optional[str], ckpt: Optional[str]) -> None:
    """A YAML file given as the checkpoint, or a checkpoint as the config: say which flag it belongs to."""
    if ckpt is not None and Path(ckpt).suffix.lower() in CONFIG_SUFFIXES:
        raise UsageError(f"--ckpt: {ckpt} is a YAML config, not a checkpoint; pass it as --config")
    if config is not None and Path(config).suffix.lower() in CHECKPOINT_SUFFIXES:
        raise UsageError(f"--config: {config} is a checkpoint, not a YAML config; pass it as --ckpt")


def _same_file(path: str, other: str) -> bool:
    return Path(in_cwd_or_repository(path)).resolve() == Path(in_cwd_or_repository(other)).resolve()


def config_for_checkpoint(ckpt: str) -> ModelPaths:
    """The config of a checkpoint given alone: ``<name>.yaml`` beside it (the convention of the
    shipped models and of most web UIs; untrusted), else the original SD config its UNet layout fits."""
    beside = Path(ckpt).with_suffix(".yaml")
    if beside.is_file():
        try:
            check_untrusted_yaml(str(beside))
        except UntrustedConfigError as err:
            raise UsageError(f"--config not given and the config beside {ckpt} is refused: {err}") from None
        return ModelPaths(str(beside), ckpt, config_trusted=False)
    if not Path(ckpt).is_file():
        raise UsageError(f"--ckpt: file not found: {ckpt}")
    try:
        shapes = checkpoint_tensor_shapes(ckpt)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    in_channels, context_dim = _unet_signature(shapes)
    if _unclip_config(shapes) is not None:
        return ModelPaths(f"{SD_CONFIGS}/{_unclip_config(shapes)}", ckpt)
    if in_channels == 4 and context_dim == SD1_CONTEXT_DIM:
        return ModelPaths(f"{SD_CONFIGS}/v1-inference.yaml", ckpt)
    if in_channels == 4 and context_dim == SD2_CONTEXT_DIM:
        v_model = _name_says_v_model(ckpt)
        return ModelPaths(f"{SD_CONFIGS}/v2-inference{'-v' if v_model else ''}.yaml", ckpt)
    if in_channels in _CONFIG_BY_UNET_INPUT and (in_channels != 9 or context_dim == SD2_CONTEXT_DIM):
        return ModelPaths(f"{SD_CONFIGS}/{_CONFIG_BY_UNET_INPUT[in_channels]}", ckpt)
    if in_channels == LDM_SR_UNET_INPUT and context_dim is None:
        return ModelPaths(LDM_SR_CONFIG, ckpt)
    raise UsageError(f"cannot tell which config fits {ckpt}: pass --config (see configs/)")


def _name_says_v_model(ckpt: str) -> bool:
    """SD 2.x 768-v files are named "...768..." or "...-v..."."""
    name = Path(ckpt).stem.lower()
    return "768" in name or re.search(r"(^|[-_])v($|[-_])", name) is not None


@dataclass(frozen=True)
class ModelSpec:
    """What a config says about its model, read without building it."""
    target: str
    parameterization: str
    image_size: int
    channels: int
    vae_factor: int
    unet_levels: int
    unet_in_channels: int
    context_dim: Optional[int]
    max_noise_level: Optional[int]
    conditioning_key: Optional[str] = None
    cond_stage_key: str = "image"
    cond_stage_target: Optional[str] = None
    timesteps: int = 1000
    n_classes: Optional[int] = None

    @property
    def kind(self) -> str:
        """``text``, ``inpaint``, ``depth``, ``upscale``, ``unclip``, ``superres`` (a plain
        ``LatentDiffusion`` that concatenates a low-resolution image, the latent-diffusion BSR
        model), ``unconditional`` (a pixel-space DDPM, or a latent model whose cond stage is
        ``__is_unconditional__``) or ``class`` (a ClassEmbedder cond stage)."""
        model_class = self.target.rsplit(".", 1)[-1]
        if model_class in _TASK_CLASSES:
            return _TASK_CLASSES[model_class]
        if model_class == "DDPM" or self.cond_stage_target == _UNCONDITIONAL_STAGE:
            return "unconditional"
        if (self.cond_stage_target or "").rsplit(".", 1)[-1] == _CLASS_STAGE:
            return "class"
        if self.conditioning_key == "concat" and self.cond_stage_key == "LR_image":
            return "superres"
        return "text"

    @property
    def latent_multiple(self) -> int:
        """Latent sides must be multiples of this for the UNet's down/up-sampling to line up."""
        return 2 ** (self.unet_levels - 1)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_factor * self.latent_multiple

    @property
    def default_pixel_size(self) -> int:
        """The image side the model was trained at. SD 2.x v-models (768-v) were trained at 768
        although their config says ``image_size: 64``."""
        if (self.kind == "text" and self.parameterization == "v" and self.image_size == 64
                and self.vae_factor == 8):
            return 768
        return self.image_size * self.vae_factor


def read_config(path: str) -> DictConfig:
    """Load a YAML config; a missing, unreadable or model-less file is a UsageError."""
    resolved = in_cwd_or_repository(path)
    if Path(resolved).is_dir():
        raise UsageError(f"--config: {path} is a folder; pass the YAML file")
    if not Path(resolved).is_file():
        raise UsageError(f"--config: file not found: {path}")
    try:
        config = OmegaConf.load(resolved)
    except Exception as err:  # yaml and OmegaConf raise many types for malformed files
        raise UsageError(f"--config: cannot read {path}: {first_line(err)}") from None
    if not isinstance(config, DictConfig) or "target" not in config.get("model", {}):
        raise UsageError(f"--config: {path} has no model section with a target class")
    return config


def read_model_spec(config: DictConfig, path: str = "the config") -> ModelSpec:
    """What the config says about its model; a missing ``unet_config`` or a value of the wrong
    type is a UsageError naming the entry."""
    def section(node: Any, key: str, where: str) -> Any:
        value = node.get(key, {}) if isinstance(node, DictConfig) else {}
        if not isinstance(value, (DictConfig, dict)):
            raise UsageError(f"--config: {path}: {where}.{key} must be a section, got {value!r}")
        return value

    def number(node: Any, key: str, default: Any, where: str) -> Any:
        value = node.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"--config: {path}: {where}.{key} must be a whole number, got {value!r}")
        return value

    def levels(node: Any, key: str, default: list, where: str) -> int:
        value = node.get(key, default)
        if not isinstance(value, (ListConfig, list, tuple)) or not value:
            raise UsageError(f"--config: {path}: {where}.{key} must be a list of multipliers, got {value!r}")
        return len(value)

    params = section(config.model, "params", "model")
    if "unet_config" not in params:
        raise UsageError(f"--config: {path} has no model.params.unet_config (the diffusion model's UNet)")
    unet = section(section(params, "unet_config", "model.params"), "params", "model.params.unet_config")
    first_stage = section(section(params, "first_stage_config", "model.params"), "params",
                          "model.params.first_stage_config")
    ddconfig = section(first_stage, "ddconfig", "model.params.first_stage_config.params")
    low_scale = section(section(params, "low_scale_config", "model.params"), "params",
                        "model.params.low_scale_config")
    augmentation = "noise_aug_config" if params.get("noise_aug_config") is not None else "low_scale_config"
    if augmentation == "noise_aug_config":  # unCLIP's noise augmentation of the image embedding
        low_scale = section(section(params, augmentation, "model.params"), "params", f"model.params.{augmentation}")
    cond_stage = params.get("cond_stage_config")
    cond_stage_target = cond_stage if isinstance(cond_stage, str) else None
    if isinstance(cond_stage, (DictConfig, dict)):
        cond_stage_target = str(cond_stage.get("target"))
    n_classes = None
    if cond_stage_target is not None and cond_stage_target.rsplit(".", 1)[-1] == _CLASS_STAGE:
        n_classes = number(section(cond_stage, "params", "model.params.cond_stage_config"), "n_classes",
                           CLASS_EMBEDDER_DEFAULT_CLASSES, "model.params.cond_stage_config.params")
    return ModelSpec(
        target=str(config.model.target),
        parameterization=str(params.get("parameterization", "eps")),
        image_size=number(params, "image_size", 256, "model.params"),
        channels=number(params, "channels", 3, "model.params"),
        vae_factor=2 ** (levels(ddconfig, "ch_mult", [1], "first_stage_config.params.ddconfig") - 1),
        unet_levels=levels(unet, "channel_mult", [1, 2, 4, 8], "unet_config.params"),
        unet_in_channels=number(unet, "in_channels", params.get("channels", 3), "unet_config.params"),
        context_dim=number(unet, "context_dim", None, "unet_config.params"),
        max_noise_level=number(low_scale, "max_noise_level", 1000, f"{augmentation}.params") if low_scale else None,
        conditioning_key=_conditioning_key(params),
        cond_stage_key=str(params.get("cond_stage_key", "image")),
        cond_stage_target=cond_stage_target,
        timesteps=number(params, "timesteps", 1000, "model.params"),
        n_classes=n_classes,
    )


def _conditioning_key(params: Any) -> Optional[str]:
    """How ``LatentDiffusion`` feeds the conditioning to its UNet: ``conditioning_key``, or, when a
    config leaves it out, ``concat`` or ``crossattn`` after ``concat_mode`` (True by default);
    None for an unconditional model."""
    if params.get("cond_stage_config") == "__is_unconditional__":
        return None
    key = params.get("conditioning_key")
    if key is not None:
        return str(key)
    return "concat" if params.get("concat_mode", True) else "crossattn"


def inference_config(config: DictConfig, fp16_unet: bool, ema: Optional[bool]) -> DictConfig:
    """A copy of ``config`` adjusted for sampling, with no change to weights or keys:

    * without ``fp16_unet`` the UNet does not cast its activations to fp16 (SD 2.x configs set
      ``use_fp16: True``, which only works under CUDA autocast);
    * with ``--ema`` or ``--no-ema`` the model keeps no separate EMA copy (``use_ema: False``):
      the loader puts the chosen weights straight into the UNet.
    """
    config = config.copy()
    params = config.model.get("params")
    if params is None:
        return config
    unet_params = params.get("unet_config", {}).get("params")
    if not fp16_unet and unet_params is not None and unet_params.get("use_fp16"):
        unet_params.use_fp16 = False
    if ema is not None and params.get("use_ema", True):
        params.use_ema = False
    return config


def load_model(config: DictConfig, paths: ModelPaths, device: torch.device, ema: Optional[bool],
               retype: Optional[Callable[[torch.nn.Module], None]] = None) -> torch.nn.Module:
    """Build the config's model and load ``ckpt`` strictly (``retype``: see
    :func:`~ldm.util.load_model_from_config`); every failure a user can cause is a UsageError
    naming the component that does not fit and, when it can tell, the right config."""
    config_path, ckpt = paths.config, paths.ckpt
    if ckpt is None:
        raise UsageError("no checkpoint given: pass --ckpt PATH (a .ckpt or .safetensors file "
                         "that fits --config)")
    if not Path(ckpt).is_file():
        raise UsageError(f"--ckpt: file not found: {ckpt}")
    untrusted = not paths.config_trusted
    try:
        outside = [] if untrusted else non_model_targets(config.model)
        if outside:
            print(f"note: {config_path} builds {', '.join(outside[:3])}, outside ldm's model classes; it runs "
                  "as your own code because you named it", file=sys.stderr)
        model = load_model_from_config(config, ckpt, device=device, verbose=False, ema=ema,
                                       untrusted_source=f"{config_path} (found beside {ckpt})" if untrusted else None,
                                       retype=retype)
    except UntrustedConfigError as err:
        raise UsageError(f"--config: {err}") from None
    except CheckpointMismatchError as err:
        hint = config_hint(ckpt, read_model_spec(config))
        raise UsageError(f"{ckpt} does not fit {config_path}: {err}" + (f". {hint}" if hint else "")) from None
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    except ImportError as err:
        raise UsageError(f"--config: {config_path} names a class that cannot be imported "
                         f"({first_line(err)})") from None
    except (TypeError, ValueError, KeyError, AttributeError, OmegaConfBaseException) as err:
        raise UsageError(f"--config: {config_path} does not build a model ({type(err).__name__}: "
                         f"{first_line(err)})") from None
    warn_if_parameterization_looks_wrong(ckpt, config_path, read_model_spec(config))
    return model


def config_hint(ckpt: str, spec: ModelSpec) -> str:
    """A suggestion of the config that fits ``ckpt``, from its UNet's input channels and
    cross-attention width; empty when nothing can be told."""
    try:
        shapes = checkpoint_tensor_shapes(ckpt)
    except CheckpointError:
        return ""
    in_channels, context_dim = _unet_signature(shapes)
    if _unclip_config(shapes) is not None and spec.kind != "unclip":
        return f"It is an unCLIP model: use scripts/unclip.py with --config {SD_CONFIGS}/{_unclip_config(shapes)}"
    if in_channels != spec.unet_in_channels and in_channels in _CONFIG_BY_UNET_INPUT:
        config = _CONFIG_BY_UNET_INPUT[in_channels]
        return f"Its UNet takes {in_channels} input channels: try --config {SD_CONFIGS}/{config}"
    if in_channels != spec.unet_in_channels and in_channels == LDM_SR_UNET_INPUT and context_dim is None:
        return f"It looks like the latent-diffusion super-resolution model: try --config {LDM_SR_CONFIG}"
    if context_dim == SD1_CONTEXT_DIM and spec.context_dim != SD1_CONTEXT_DIM:
        return f"It looks like an SD 1.x model: try --config {SD_CONFIGS}/v1-inference.yaml"
    if context_dim == SD2_CONTEXT_DIM and spec.context_dim != SD2_CONTEXT_DIM:
        return (f"It looks like an SD 2.x model: try --config {SD_CONFIGS}/v2-inference-v.yaml for a "
                f"768-v model or {SD_CONFIGS}/v2-inference.yaml for a 512-base (eps) model")
    return ""


def _unet_signature(shapes: Mapping[str, Tuple[int, ...]]) -> Tuple[Optional[int], Optional[int]]:
    """(input channels, cross-attention context width) of the UNet in a checkpoint, from the
    shapes of its tensors (``checkpoint_tensor_shapes``)."""
    first_conv = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    in_channels = int(first_conv[1]) if first_conv is not None and len(first_conv) == 4 else None
    context_dim = next((int(shape[1]) for key, shape in shapes.items()
                        if key.startswith("model.diffusion_model.") and key.endswith("attn2.to_k.weight")),
                       None)
    return in_channels, context_dim


def _unclip_config(shapes: Mapping[str, Tuple[int, ...]]) -> Optional[str]:
    """The unCLIP config (L or H) of a checkpoint with a CLIP image embedder, else None."""
    projection = shapes.get("embedder.model.visual.proj")
    if projection is None or len(projection) != 2:
        return None
    return _UNCLIP_CONFIG_BY_EMBEDDING.get(int(projection[1]))


def warn_if_parameterization_looks_wrong(ckpt: str, config_path: str, spec: ModelSpec) -> None:
    """v- and eps-models of SD 2.x have the same layout, so a wrong config loads and makes noise.
    Warn (not fail) when the file name says otherwise than the config: "768" or "-v" for a
    v-model, "base" or "512" for an eps-model."""
    if spec.kind != "text" or spec.context_dim != SD2_CONTEXT_DIM:
        return
    name = Path(ckpt).stem.lower()
    looks_v = _name_says_v_model(ckpt)
    looks_eps = "base" in name or "512" in name
    if spec.parameterization == "eps" and looks_v and not looks_eps:
        print(f"warning: {ckpt} looks like a 768-v model but {config_path} is an eps config; if the "
              f"images are noise, use --config {SD_CONFIGS}/v2-inference-v.yaml", file=sys.stderr)
    elif spec.parameterization == "v" and looks_eps and not looks_v:
        print(f"warning: {ckpt} looks like a 512-base (eps) model but {config_path} is a v config; "
              f"if the images are noise, use --config {SD_CONFIGS}/v2-inference.yaml", file=sys.stderr)


def model_hash(ckpt: str) -> str:
    """The first 10 hex digits of the file's SHA-256 (A1111's "Model hash")."""
    digest = hashlib.sha256()
    with open(ckpt, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:HASH_LENGTH]


def model_name(ckpt: str) -> str:
    return Path(ckpt).stem
