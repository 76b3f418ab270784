"""Configs of tiny models for tests (and anything else that needs a model in milliseconds).

Import as ``from tests.tiny_configs import ...`` (the suite runs with ``python -m pytest`` from the
repository root). Every function returns a fresh OmegaConf node in the original config layout
(``target`` + ``params``), built from the same classes as the real configs, so it goes through
``ldm.util.instantiate_from_config`` like an original YAML. Keyword overrides replace entries of
``params`` (they are merged, so nested dicts may be given partially).

Sizes follow the suite's rules: channels are multiples of 32 (GroupNorm has 32 groups), one
residual block per level, attention at downsampling rate 2, 8x8 latents from 16x16 images.

Stable names (other test files rely on them):
    tiny_unet_config(**overrides)                 UNetModel, 32 channels, mult (1, 2), context 32
    tiny_autoencoder_config(**overrides)          AutoencoderKL, ch 32, mult (1, 2), z 4, f = 2
    tiny_latent_diffusion_config(**overrides)     LatentDiffusion, crossattn, torch.nn.Identity cond stage
    tiny_latent_diffusion_batch(batch_size, ...)  a matching training batch
    tiny_inpainting_config(**overrides)           LatentInpaintDiffusion (UNet in 9), batch + mask, masked_image
    tiny_depth2img_config(**overrides)            LatentDepth2ImageDiffusion (UNet in 5), batch + depth
    tiny_upscaler_config(**overrides)             LatentUpscaleDiffusion like x4 (UNet in 7, v), batch + lr
    tiny_unclip_config(variant, *dotlist)         configs/stable-diffusion/v2-1-stable-unclip-{l,h}-inference.yaml
                                                  shrunk by TINY_UNCLIP_OVERRIDES (whole config, ``model:`` root)
    tiny_ldm_superres_config(*dotlist)            the original bsr_sr.yaml shrunk by LDM_SR_TINY_OVERRIDES
    tiny_ddpm_config(**overrides)                 pixel-space DDPM (no first stage, no conditioning), 3 x 16 x 16
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

TINY_CONTEXT_DIM = 32
TINY_CONTEXT_TOKENS = 3
TINY_LATENT_CHANNELS = 4
TINY_LATENT_SIZE = 8
TINY_IMAGE_SIZE = 16  # the tiny autoencoder downsamples by 2


def _config(target: str, params: Dict[str, Any], overrides: Dict[str, Any]) -> DictConfig:
    base = OmegaConf.create({"target": target, "params": params})
    return OmegaConf.merge(base, {"params": overrides}) if overrides else base


def tiny_unet_config(**overrides) -> DictConfig:
    """A UNetModel with the SD layout at toy size: model_channels 32, channel_mult (1, 2), one res
    block per level, a SpatialTransformer at ds 2 (64 channels, 2 heads of 32), context_dim 32."""
    params = dict(image_size=TINY_LATENT_SIZE, in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS,
                  model_channels=32, attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2],
                  num_heads=2, use_spatial_transformer=True, transformer_depth=1,
                  context_dim=TINY_CONTEXT_DIM, use_checkpoint=False, legacy=False)
    return _config("ldm.modules.diffusionmodules.openaimodel.UNetModel", params, overrides)


def tiny_autoencoder_config(**overrides) -> DictConfig:
    """An AutoencoderKL with ch 32, ch_mult (1, 2) (downsampling factor 2), 4 latent channels,
    and the inference configs' ``torch.nn.Identity`` loss."""
    ddconfig = dict(double_z=True, z_channels=TINY_LATENT_CHANNELS, resolution=TINY_IMAGE_SIZE, in_channels=3,
                    out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    params = dict(embed_dim=TINY_LATENT_CHANNELS, ddconfig=ddconfig, lossconfig={"target": "torch.nn.Identity"})
    return _config("ldm.models.autoencoder.AutoencoderKL", params, overrides)


def tiny_latent_diffusion_config(**overrides) -> DictConfig:
    """A LatentDiffusion with cross-attention conditioning whose cond stage is ``torch.nn.Identity``
    (no network): ``get_learned_conditioning(c)`` returns ``c``, so the conditioning is a context
    tensor (B, TINY_CONTEXT_TOKENS, 32) given under the batch key ``txt``. The SD 1.x schedule
    (1000 steps, linear 0.00085..0.012), eps prediction, EMA off, scale_factor 0.18215.
    Pass e.g. ``cond_stage_config="__is_unconditional__"`` for an unconditional model, or
    ``unet_config=tiny_unet_config(...)`` / ``first_stage_config=...`` to swap a part."""
    params = dict(linear_start=0.00085, linear_end=0.012, num_timesteps_cond=1, log_every_t=200,
                  timesteps=1000, first_stage_key="jpg", cond_stage_key="txt", image_size=TINY_LATENT_SIZE,
                  channels=TINY_LATENT_CHANNELS, cond_stage_trainable=False, conditioning_key="crossattn",
                  monitor="val/loss_simple_ema", scale_factor=0.18215, use_ema=False,
                  unet_config=tiny_unet_config(), first_stage_config=tiny_autoencoder_config(),
                  cond_stage_config={"target": "torch.nn.Identity"})
    for key in ("unet_config", "first_stage_config", "cond_stage_config"):  # replaced whole, not merged
        if key in overrides:
            params[key] = overrides.pop(key)
    return _config("ldm.models.diffusion.ddpm.LatentDiffusion", params, overrides)


def tiny_latent_diffusion_batch(batch_size: int = 2, generator: torch.Generator = None) -> Dict[str, torch.Tensor]:
    """A batch for :func:`tiny_latent_diffusion_config`: ``jpg`` images (B, 16, 16, 3) in [-1, 1]
    (channels last, as datasets give them) and ``txt`` context tensors (B, 3, 32)."""
    images = torch.rand(batch_size, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3, generator=generator) * 2 - 1
    context = torch.randn(batch_size, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM, generator=generator)
    return {"jpg": images, "txt": context}


def _task_config(target: str, in_channels: int, conditioning_key: str, task_params: Dict[str, Any],
                 overrides: Dict[str, Any], **unet_overrides) -> DictConfig:
    config = tiny_latent_diffusion_config(conditioning_key=conditioning_key,
                                          unet_config=tiny_unet_config(in_channels=in_channels, **unet_overrides))
    config.target = target
    config.params = OmegaConf.merge(config.params, task_params)
    return OmegaConf.merge(config, {"params": overrides}) if overrides else config


def tiny_inpainting_config(**overrides) -> DictConfig:
    """The SD 2 inpainting model at toy size (``hybrid``, UNet in 4 + 1 + 4 = 9). Its batch adds
    ``mask`` (B, 16, 16, 1), 1 where to paint, and ``masked_image`` (B, 16, 16, 3) to the
    :func:`tiny_latent_diffusion_batch` keys."""
    return _task_config("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", 9, "hybrid",
                        {"finetune_keys": None}, overrides)


# MiDaS DPT-Hybrid shrunk (its full size is 123 M parameters): the original class and model type,
# a narrower, shallower backbone and head (ldm.modules.midas.api.build_model options).
TINY_MIDAS = {"target": "ldm.modules.midas.api.MiDaSInference",
              "params": {"model_type": "dpt_hybrid", "features": 32,
                         "backbone_options": {"embed_dim": 64, "depth": 4, "num_heads": 2, "img_size": 64,
                                              "hooks": [0, 1, 2, 3], "stem_width": 32,
                                              "stage_widths": [128, 128, 256], "stage_depths": [1, 1, 2]}}}


def tiny_depth2img_config(**overrides) -> DictConfig:
    """The SD 2 depth model at toy size (``hybrid``, UNet in 4 + 1 = 5), with the original
    ``depth_stage_config`` class (MiDaS DPT-Hybrid, shrunk: ``TINY_MIDAS``). Its batch adds
    ``depth`` (B, 16, 16), any range."""
    depth = TINY_MIDAS
    return _task_config("ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion", 5, "hybrid",
                        {"finetune_keys": None, "depth_stage_config": depth}, overrides)


def tiny_upscaler_config(**overrides) -> DictConfig:
    """The x4 upscaler at toy size (``hybrid-adm``, v-prediction, UNet in 4 + 3 = 7, noise level as
    class label out of 1000, noise augmentation up to level 350). Its batch adds ``lr``
    (B, 8, 8, 3): the low-resolution image at latent size, in [-1, 1]."""
    low_scale = {"target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
                 "params": {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02},
                            "max_noise_level": 350}}
    return _task_config("ldm.models.diffusion.ddpm.LatentUpscaleDiffusion", 7, "hybrid-adm",
                        {"low_scale_config": low_scale, "low_scale_key": "lr", "parameterization": "v",
                         "linear_start": 0.0001, "linear_end": 0.02, "scale_factor": 0.08333},
                        overrides, num_classes=1000)


# The SD 2.1 unCLIP inference configs at toy size, as OmegaConf dotlist overrides of the original YAML
# files: every class and param name stays the original's. The CLIP towers (OpenCLIP text, CLIP image
# embedder) shrink through their ``arch_overrides`` (ours, ldm/modules/encoders/openclip.py:
# resized_arch); the image embedding is 32 wide, so the UNet's y is 32 + 32 (noise-level embedding).
TINY_UNCLIP_EMBEDDING = 32
_TINY_CLIP_SIZES = ("{embed_dim: 32, vision_width: 32, vision_layers: 1, vision_heads: 2, patch_size: 8, "
                    "image_size: 32, text_width: 32, text_heads: 2, text_layers: 2}")
TINY_UNCLIP_OVERRIDES = [
    "model.params.image_size=8",
    "model.params.unet_config.params.model_channels=32",
    "model.params.unet_config.params.channel_mult=[1,2]",
    "model.params.unet_config.params.num_res_blocks=1",
    "model.params.unet_config.params.attention_resolutions=[2]",
    "model.params.unet_config.params.num_head_channels=32",
    "model.params.unet_config.params.context_dim=32",
    f"model.params.unet_config.params.adm_in_channels={2 * TINY_UNCLIP_EMBEDDING}",
    "model.params.unet_config.params.use_checkpoint=False",
    "model.params.first_stage_config.params.ddconfig.ch=32",
    "model.params.first_stage_config.params.ddconfig.ch_mult=[1,2]",
    "model.params.first_stage_config.params.ddconfig.num_res_blocks=1",
    "model.params.first_stage_config.params.ddconfig.resolution=16",
    f"model.params.cond_stage_config.params.arch_overrides={_TINY_CLIP_SIZES}",
    f"model.params.embedder_config.params.arch_overrides={_TINY_CLIP_SIZES}",
    f"model.params.noise_aug_config.params.timestep_dim={TINY_UNCLIP_EMBEDDING}",
]
_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "stable-diffusion"


def tiny_unclip_config(variant: str, *dotlist: str) -> DictConfig:
    """The whole unCLIP-``variant`` (``"l"`` or ``"h"``) inference config with TINY_UNCLIP_OVERRIDES
    and then ``dotlist`` applied (e.g. unCLIP-L's ``model.params.noise_aug_config.params.clip_stats_path=...``,
    whose statistics must then be TINY_UNCLIP_EMBEDDING wide)."""
    original = OmegaConf.load(_CONFIGS / f"v2-1-stable-unclip-{variant}-inference.yaml")
    return OmegaConf.merge(original, OmegaConf.from_dotlist([*TINY_UNCLIP_OVERRIDES, *dotlist]))


# Karlo's unCLIP prior (configs/karlo/prior_1B_vit_l.yaml, 1.0 B parameters) shrunk by dotlist
# overrides: the original transformer layout at width 64, 2 blocks of 2 heads, over 32-d CLIP
# features (the tiny CLIP's text width and embedding size). The diffusion section is unchanged.
KARLO_PRIOR_CONFIG = "configs/karlo/prior_1B_vit_l.yaml"
TINY_KARLO_PRIOR = ["model.hparams.xf_width=64", "model.hparams.xf_layers=2", "model.hparams.xf_heads=2",
                    "model.hparams.clip_dim=32"]


def tiny_karlo_prior_config() -> DictConfig:
    """The Karlo prior config with :data:`TINY_KARLO_PRIOR` applied."""
    config = OmegaConf.load(Path(__file__).resolve().parent.parent / KARLO_PRIOR_CONFIG)
    return OmegaConf.merge(config, OmegaConf.from_dotlist(TINY_KARLO_PRIOR))


# The latent-diffusion BSR super-resolution model (concat conditioning on the low-resolution image,
# VQ-f4 first stage) as the original config has it, shrunk by these dotlist overrides only: every
# class, key and the x4 factor stay; widths, depths and the codebook shrink.
LDM_SR_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "latent-diffusion" / "bsr_sr.yaml"
LDM_SR_TINY_OVERRIDES = (
    "model.params.unet_config.params.model_channels=32",         # 160: levels of 32, 64, 64, 128
    "model.params.unet_config.params.num_res_blocks=1",          # 2
    "model.params.first_stage_config.params.ddconfig.ch=32",     # 128: levels of 32, 64, 128 (f = 4)
    "model.params.first_stage_config.params.ddconfig.num_res_blocks=1",  # 2
    "model.params.first_stage_config.params.n_embed=64",         # 8192 codebook entries
)


def tiny_ldm_superres_config(*dotlist: str) -> DictConfig:
    """The whole original ``configs/latent-diffusion/bsr_sr.yaml`` (model and data sections) with
    ``LDM_SR_TINY_OVERRIDES`` and then ``dotlist`` applied. Its model takes a low-resolution image
    with sides multiples of 8 (4 UNet levels at latent = image size) and makes one 4x larger."""
    config = OmegaConf.load(LDM_SR_CONFIG)
    return OmegaConf.merge(config, OmegaConf.from_dotlist([*LDM_SR_TINY_OVERRIDES, *dotlist]))


def tiny_ddpm_config(**overrides) -> DictConfig:
    """A pixel-space DDPM (Ho et al. 2020; no autoencoder, no conditioning) on 3 x 16 x 16 images in
    [-1, 1] under the batch key ``image``: the tiny UNet without cross-attention (self-attention at
    ds 2), the linear schedule of 1000 steps, eps prediction, EMA off. Override e.g.
    ``parameterization="v"`` or ``timesteps=20``."""
    unet = tiny_unet_config(image_size=TINY_IMAGE_SIZE, in_channels=3, out_channels=3, use_spatial_transformer=False,
                            context_dim=None)
    params = dict(unet_config=unet, timesteps=1000, beta_schedule="linear", image_size=TINY_IMAGE_SIZE, channels=3,
                  first_stage_key="image", use_ema=False, log_every_t=200, monitor="val/loss_simple_ema")
    return _config("ldm.models.diffusion.ddpm.DDPM", params, overrides)
