"""Latent diffusion models for specific tasks (Stability-AI SD 2.x): x4 upscaling, inpainting,
depth-to-image and image-embedding variation (unCLIP). Importable from
``ldm.models.diffusion.ddpm`` as the original configs name them."""
from __future__ import annotations

from functools import partialmethod
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.modules.freezing import freeze_module, keep_in_eval_mode
from ldm.util import exists, instantiate_from_config

DEFAULT_FINETUNE_KEYS = ("model.diffusion_model.input_blocks.0.0.weight",
                         "model_ema.diffusion_modelinput_blocks00weight")


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) batch images as contiguous float (B, C, H, W)."""
    return rearrange(x, "b h w c -> b c h w").to(memory_format=torch.contiguous_format).float()


class LatentUpscaleDiffusion(LatentDiffusion):
    """Text-guided super-resolution (SD x4 upscaler): the noise-augmented low-resolution image is
    concatenated to the latent and its noise level is the UNet's class label (``hybrid-adm``)."""

    def __init__(self, *args, low_scale_config, low_scale_key="LR", noise_level_key=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cond_stage_trainable:
            raise ValueError(f"{type(self).__name__} does not support a trainable cond stage")
        self.instantiate_low_stage(low_scale_config)
        self.low_scale_key = low_scale_key
        self.noise_level_key = noise_level_key

    def instantiate_low_stage(self, config) -> None:
        self.low_scale_model = freeze_module(instantiate_from_config(config))

    @torch.no_grad()
    def get_input(self, batch, k, cond_key=None, bs=None, log_mode=False):
        """``[z, {c_concat: [noised LR image], c_crossattn: [c], c_adm: noise level}]``; with
        ``log_mode`` also the image, its reconstruction, the raw conditioning, the LR image and
        its noised version, and the noise levels."""
        if self.noise_level_key is not None:
            raise NotImplementedError("noise_level_key (noise levels from the batch) is not implemented, "
                                      "as in the original")
        if not log_mode:
            z, c = super().get_input(batch, k, force_c_encode=True, bs=bs)
        else:
            z, c, x, xrec, xc = super().get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                                  force_c_encode=True, return_original_cond=True, bs=bs)
        x_low = channels_first(batch[self.low_scale_key][:bs]).to(self.device)
        zx, noise_level = self.low_scale_model(x_low)
        all_conds = {"c_concat": [zx], "c_crossattn": [c], "c_adm": noise_level}
        if log_mode:
            return z, all_conds, x, xrec, xc, x_low, self.low_scale_model.decode(zx), noise_level
        return z, all_conds

    # The original's log_images defaults for this task: 200 DDIM steps at eta 1, no quantized or in/outpainting rows.
    log_images = partialmethod(LatentDiffusion.log_images, ddim_steps=200, ddim_eta=1., quantize_denoised=False,
                               inpaint=False)

    def _log_images_input(self, batch: Mapping, N: int) -> Tuple[Any, ...]:
        """As LatentDiffusion's, plus the LR image and its noised version with the noise levels."""
        z, c, x, xrec, xc, x_low, x_low_rec, noise_level = self.get_input(batch, self.first_stage_key,
                                                                          bs=N, log_mode=True)
        levels = "-".join(str(level) for level in noise_level.cpu().numpy().tolist())
        entries = {"x_lr": x_low, f"x_lr_rec_@noise_levels{levels}": x_low_rec}
        return z, c, x, xrec, xc, {**entries, **self._task_log_images(batch, c)}


class LatentFinetuneDiffusion(LatentDiffusion):
    """Base of the models that concatenate extra channels (``concat_keys``) to the latent. When
    fine-tuning from a text-to-image checkpoint, the wider first UNet convolution (``finetune_keys``)
    starts at zero with the checkpoint's weights in its first ``keep_finetune_dims`` input channels.
    ``reset_ema`` restarts the EMA from those loaded weights (for a checkpoint without EMA copy;
    the original rejected it here because it loads the checkpoint after the base class)."""

    def __init__(self, concat_keys: tuple, finetune_keys=DEFAULT_FINETUNE_KEYS, keep_finetune_dims=4,
                 c_concat_log_start=None, c_concat_log_end=None, *args, **kwargs):
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", list())
        reset_ema = kwargs.pop("reset_ema", False)
        reset_num_ema_updates = kwargs.pop("reset_num_ema_updates", False)
        super().__init__(*args, **kwargs)
        self.finetune_keys = finetune_keys
        self.concat_keys = concat_keys
        self.keep_dims = keep_finetune_dims
        self.c_concat_log_start = c_concat_log_start
        self.c_concat_log_end = c_concat_log_end
        if exists(self.finetune_keys) and not exists(ckpt_path):
            raise ValueError("finetune_keys need a ckpt_path to fine-tune from (set finetune_keys: null otherwise)")
        if exists(ckpt_path):
            self.init_from_ckpt(ckpt_path, ignore_keys)
        self._reset_ema_after_loading(ckpt_path, reset_ema, reset_num_ema_updates)

    def _fit_checkpoint_to_model(self, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Widen the ``finetune_keys`` tensors of the checkpoint to the model's input conv:
        zeros, with the checkpoint's weights in the first ``keep_finetune_dims`` input channels."""
        if exists(self.finetune_keys):
            templates = [p for name, p in self.named_parameters() if name in self.finetune_keys]
            if not templates:
                raise KeyError(f"no parameter of the model is named in finetune_keys {list(self.finetune_keys)}")
            for key in self.finetune_keys:
                if key in sd:
                    print(f"modifying key '{key}' and keeping its original {self.keep_dims} (channels) dimensions only")
                    widened = torch.zeros_like(templates[-1])
                    widened[:, :self.keep_dims, ...] = sd[key]
                    sd[key] = widened
        return super()._fit_checkpoint_to_model(sd)

    # The original's log_images defaults for these tasks: 200 DDIM steps at eta 1; inputs, conditioning,
    # diffusion row, samples and guided samples only.
    log_images = partialmethod(LatentDiffusion.log_images, ddim_steps=200, ddim_eta=1., quantize_denoised=False,
                               inpaint=False, plot_progressive_rows=False)

    def _log_images_input(self, batch: Mapping, N: int) -> Tuple[Any, ...]:
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, bs=N, return_first_stage_outputs=True)
        return z, c, x, xrec, xc, self._task_log_images(batch, c)

    def _task_log_images(self, batch: Mapping, c) -> Dict[str, torch.Tensor]:
        """The concatenated channels ``c_concat_log_start:c_concat_log_end`` decoded, when set."""
        if self.c_concat_log_start is None and self.c_concat_log_end is None:
            return {}
        c_cat = c["c_concat"][0]
        return {"c_concat_decoded": self.decode_first_stage(c_cat[:, self.c_concat_log_start:self.c_concat_log_end])}

    def _finetune_input(self, batch, bs):
        """Latent, encoded text and first-stage outputs shared by the concat models."""
        if self.cond_stage_trainable:
            raise ValueError(f"{type(self).__name__} does not support a trainable cond stage")
        if not exists(self.concat_keys):
            raise ValueError(f"{type(self).__name__} needs concat_keys")
        return LatentDiffusion.get_input(self, batch, self.first_stage_key, return_first_stage_outputs=True,
                                         force_c_encode=True, return_original_cond=True, bs=bs)


class LatentInpaintDiffusion(LatentFinetuneDiffusion):
    """Inpainting (SD 2 inpainting): the UNet sees [latent, mask resized to the latent,
    latent of the masked image] = 4 + 1 + 4 = 9 channels."""

    def __init__(self, concat_keys=("mask", "masked_image"), masked_image_key="masked_image", *args, **kwargs):
        super().__init__(concat_keys, *args, **kwargs)
        self.masked_image_key = masked_image_key
        if self.masked_image_key not in concat_keys:
            raise ValueError(f"masked_image_key '{masked_image_key}' must be one of concat_keys {list(concat_keys)}")

    def concat_conditioning(self, batch: Mapping, latent_hw: Sequence[int], bs: Optional[int] = None) -> torch.Tensor:
        """The channels joined to the latent: each concat key's (B, H, W, C) batch tensor, the
        masked image encoded to a latent, anything else (the mask) resized to the latent size."""
        channels = []
        for key in self.concat_keys:
            cc = channels_first(batch[key])[:bs].to(self.device)
            if key == self.masked_image_key:
                cc = self.get_first_stage_encoding(self.encode_first_stage(cc))
            else:
                cc = F.interpolate(cc, size=tuple(latent_hw))
            channels.append(cc)
        return torch.cat(channels, dim=1)

    @torch.no_grad()
    def get_input(self, batch, k, cond_key=None, bs=None, return_first_stage_outputs=False):
        z, c, x, xrec, xc = self._finetune_input(batch, bs)
        all_conds = {"c_concat": [self.concat_conditioning(batch, z.shape[-2:], bs)], "c_crossattn": [c]}
        if return_first_stage_outputs:
            return z, all_conds, x, xrec, xc
        return z, all_conds

    def _task_log_images(self, batch: Mapping, c) -> Dict[str, torch.Tensor]:
        return {**super()._task_log_images(batch, c), "masked_image": channels_first(batch["masked_image"])}


def normalized_depth(depth: torch.Tensor, latent_hw: Sequence[int]) -> torch.Tensor:
    """A depth map (B, 1, H, W), any range, resized bicubically to the latent size and scaled per
    sample to [-1, 1] as the original does: 2 (d - min) / (max - min + 0.001) - 1."""
    depth = F.interpolate(depth.float(), size=tuple(latent_hw), mode="bicubic", align_corners=False)
    depth_min = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    depth_max = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    return 2.0 * (depth - depth_min) / (depth_max - depth_min + 0.001) - 1.0


def depth_as_b1hw(depth: torch.Tensor) -> torch.Tensor:
    """Accept depth maps as (B, H, W), (B, 1, H, W) or (B, H, W, 1)."""
    if depth.dim() == 3:
        return depth[:, None]
    if depth.dim() == 4 and depth.shape[1] == 1:
        return depth
    if depth.dim() == 4 and depth.shape[-1] == 1:
        return depth.permute(0, 3, 1, 2)
    raise ValueError(f"a depth map must be (B, H, W), (B, 1, H, W) or (B, H, W, 1), got {tuple(depth.shape)}")


class LatentDepth2ImageDiffusion(LatentFinetuneDiffusion):
    """Depth-conditioned image generation (SD 2 depth): the UNet sees [latent, normalised depth]
    = 4 + 1 = 5 channels. Depth maps come from the batch key ``depth``, or are estimated from
    ``midas_in`` by the depth stage (MiDaS DPT-Hybrid in SD 2, ``depth_model.*`` in the checkpoint)."""

    depth_map_key = "depth"

    def __init__(self, depth_stage_config, concat_keys=("midas_in",), *args, **kwargs):
        super().__init__(concat_keys=concat_keys, *args, **kwargs)
        self.depth_model = instantiate_from_config(depth_stage_config)
        self.depth_stage_key = concat_keys[0]

    @torch.no_grad()
    def estimate_depth(self, midas_in: torch.Tensor) -> torch.Tensor:
        """Depth (B, 1, H, W) of MiDaS-prepared images (B, 3, H, W)."""
        return self.depth_model(midas_in)

    @torch.no_grad()
    def estimate_depth_of_images(self, images: torch.Tensor) -> torch.Tensor:
        """Depth (B, 1, h, w) of images (B, 3, H, W) in [-1, 1], prepared for the depth stage as
        ``AddMiDaS`` prepares training batches (MiDaS: resized to its input size and normalised)."""
        prepare = getattr(self.depth_model, "transform_images", None)
        return self.estimate_depth(prepare(images) if prepare is not None else images)

    def depth_to_concat(self, depth: torch.Tensor, latent_hw: Sequence[int]) -> torch.Tensor:
        """The concat channel for a depth map in any range: resized and scaled to [-1, 1]."""
        return normalized_depth(depth_as_b1hw(depth).to(self.device), latent_hw)

    def _depth_of_batch(self, batch: Mapping, bs: Optional[int]) -> torch.Tensor:
        if self.depth_map_key in batch:
            return depth_as_b1hw(batch[self.depth_map_key][:bs])
        return self.estimate_depth(batch[self.depth_stage_key][:bs].to(self.device))

    @torch.no_grad()
    def get_input(self, batch, k, cond_key=None, bs=None, return_first_stage_outputs=False):
        if len(self.concat_keys) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly one concat key, got {list(self.concat_keys)}")
        z, c, x, xrec, xc = self._finetune_input(batch, bs)
        c_cat = self.depth_to_concat(self._depth_of_batch(batch, bs), z.shape[2:])
        all_conds = {"c_concat": [c_cat], "c_crossattn": [c]}
        if return_first_stage_outputs:
            return z, all_conds, x, xrec, xc
        return z, all_conds

    def _task_log_images(self, batch: Mapping, c) -> Dict[str, torch.Tensor]:
        """The depth map, scaled per sample to [-1, 1]."""
        depth = self._depth_of_batch(batch, None).to(self.device).float()
        depth_min = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
        depth_max = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
        scaled = 2.0 * (depth - depth_min) / (depth_max - depth_min) - 1.0
        return {**super()._task_log_images(batch, c), "depth": scaled}


class LatentUpscaleFinetuneDiffusion(LatentFinetuneDiffusion):
    """Upscaling fine-tuned from a text-to-image model: the LR image (optionally pixel-unshuffled
    by ``reshuffle_patch_size``, optionally noise-augmented) is concatenated to the latent."""

    def __init__(self, concat_keys=("lr",), reshuffle_patch_size=None, low_scale_config=None,
                 low_scale_key=None, *args, **kwargs):
        super().__init__(concat_keys=concat_keys, *args, **kwargs)
        if reshuffle_patch_size is not None and not isinstance(reshuffle_patch_size, int):
            raise TypeError(f"reshuffle_patch_size must be an int, got {reshuffle_patch_size!r}")
        self.reshuffle_patch_size = reshuffle_patch_size
        self.low_scale_model = None
        if low_scale_config is not None:
            if not exists(low_scale_key):
                raise ValueError("low_scale_config needs low_scale_key, the concat key it noises")
            print("Initializing a low-scale model")
            self.instantiate_low_stage(low_scale_config)
            self.low_scale_key = low_scale_key

    def instantiate_low_stage(self, config) -> None:
        self.low_scale_model = freeze_module(instantiate_from_config(config))

    @torch.no_grad()
    def get_input(self, batch, k, cond_key=None, bs=None, return_first_stage_outputs=False):
        if len(self.concat_keys) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly one concat key, got {list(self.concat_keys)}")
        z, c, x, xrec, xc = self._finetune_input(batch, bs)
        channels, noise_level = [], None
        for key in self.concat_keys:
            cc = rearrange(batch[key], "b h w c -> b c h w")
            if exists(self.reshuffle_patch_size):
                p = self.reshuffle_patch_size
                cc = rearrange(cc, "b c (p1 h) (p2 w) -> b (p1 p2 c) h w", p1=p, p2=p)
            cc = cc[:bs].to(self.device)
            if exists(self.low_scale_model) and key == self.low_scale_key:
                cc, noise_level = self.low_scale_model(cc)
            channels.append(cc)
        all_conds = {"c_concat": [torch.cat(channels, dim=1)], "c_crossattn": [c]}
        if exists(noise_level):
            all_conds["c_adm"] = noise_level
        if return_first_stage_outputs:
            return z, all_conds, x, xrec, xc
        return z, all_conds

    def _task_log_images(self, batch: Mapping, c) -> Dict[str, torch.Tensor]:
        return {**super()._task_log_images(batch, c), "lr": rearrange(batch["lr"], "b h w c -> b c h w")}


class ImageEmbeddingConditionedLatentDiffusion(LatentDiffusion):
    """Image variations (SD 2.1 unCLIP): a CLIP image embedding of ``batch[embedding_key]``,
    optionally noise-augmented (its noise-level embedding appended), is the UNet's ``y``
    (``crossattn-adm``); in training the whole embedding is dropped with ``embedding_dropout``."""

    def __init__(self, embedder_config, embedding_key="jpg", embedding_dropout=0.5, freeze_embedder=True,
                 noise_aug_config=None, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embed_key = embedding_key
        self.embedding_dropout = embedding_dropout
        self._init_embedder(embedder_config, freeze_embedder)
        self._init_noise_aug(noise_aug_config)

    def _init_embedder(self, config, freeze: bool = True) -> None:
        """Unlike the original (which then has no embedder at all), ``freeze=False`` keeps a trainable one."""
        embedder = instantiate_from_config(config)
        self.embedder = freeze_module(embedder) if freeze else embedder

    def _init_noise_aug(self, config) -> None:
        if config is None:
            self.noise_augmentor = None
            return
        noise_augmentor = instantiate_from_config(config)
        if not isinstance(noise_augmentor, torch.nn.Module):
            raise TypeError(f"noise_aug_config must build a torch module, got {type(noise_augmentor).__name__}")
        self.noise_augmentor = keep_in_eval_mode(noise_augmentor)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``c_adm`` for (B, C, H, W) images: the embedding, with the noise-level embedding appended
        when a noise augmentor is configured."""
        c_adm = self.embedder(images)
        if self.noise_augmentor is not None:
            c_adm, noise_level_emb = self.noise_augmentor(c_adm)
            c_adm = torch.cat((c_adm, noise_level_emb), 1)
        return c_adm

    def get_input(self, batch, k, cond_key=None, bs=None, **kwargs):
        outputs = LatentDiffusion.get_input(self, batch, k, bs=bs, **kwargs)
        z, c = outputs[0], outputs[1]
        c_adm = self.image_embedding(rearrange(batch[self.embed_key][:bs], "b h w c -> b c h w").to(self.device))
        if self.training:
            keep = torch.bernoulli((1.0 - self.embedding_dropout)
                                   * torch.ones(c_adm.shape[0], device=c_adm.device)[:, None])
            c_adm = keep * c_adm
        return [z, {"c_crossattn": [c], "c_adm": c_adm}] + list(outputs[2:])

    # The original's log_images for this task: inputs, reconstructions, the prompt and guided DDIM samples
    # (scale 5, empty prompt as the unconditional one), logged as "samplescfg_scale_...".
    log_images = partialmethod(LatentDiffusion.log_images, sample=False, quantize_denoised=False, inpaint=False,
                               plot_diffusion_rows=False, plot_progressive_rows=False,
                               unconditional_guidance_scale=5., unconditional_guidance_label="")
    guided_samples_key = "samplescfg_scale_{:.2f}"
