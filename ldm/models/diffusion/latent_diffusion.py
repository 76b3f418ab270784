"""``LatentDiffusion``: diffusion in the latent space of a frozen first stage, conditioned through a
conditioning encoder (Rombach et al. 2022). Importable as ``ldm.models.diffusion.ddpm.LatentDiffusion``,
the path the original configs name."""

from __future__ import annotations

import functools
import inspect
from typing import List, Mapping, Optional, Tuple

import torch
from einops import rearrange, repeat
from omegaconf import ListConfig

from ldm.models.diffusion.ddpm import DDPM, RAW_CONDITIONING_KEYS
from ldm.models.diffusion.image_logging import CLASS_CONDITIONING_KEYS, LatentImageLogging
from ldm.models.diffusion.latent_sampling import LatentAncestralSampling
from ldm.models.diffusion.patchwise import PatchwiseProcessing
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.freezing import freeze_module
from ldm.util import default, instantiate_from_config


class LatentDiffusion(LatentAncestralSampling, LatentImageLogging, PatchwiseProcessing, DDPM):
    """Diffusion in the latent space of a frozen autoencoder (``first_stage_model``), conditioned
    through ``cond_stage_model`` (Rombach et al. 2022). Latents are ``scale_factor`` times the
    autoencoder's posterior samples. Setting ``split_input_params`` (as the original notebooks do)
    makes ``apply_model`` and ``decode_first_stage`` work in overlapping patches
    (:mod:`~ldm.models.diffusion.patchwise`)."""

    def __init__(self, first_stage_config, cond_stage_config, num_timesteps_cond=None,
                 cond_stage_key="image", cond_stage_trainable=False, concat_mode=True,
                 cond_stage_forward=None, conditioning_key=None, scale_factor=1.0,
                 scale_by_std=False, force_null_conditioning=False, *args, **kwargs):
        self.force_null_conditioning = force_null_conditioning
        self.num_timesteps_cond = default(num_timesteps_cond, 1)
        self.scale_by_std = scale_by_std
        timesteps = kwargs.get("timesteps", 1000)
        if self.num_timesteps_cond > timesteps:
            raise ValueError(f"num_timesteps_cond ({self.num_timesteps_cond}) exceeds timesteps ({timesteps})")
        if conditioning_key is None:  # the original's default, from before DiffusionWrapper existed
            conditioning_key = "concat" if concat_mode else "crossattn"
        if cond_stage_config == "__is_unconditional__" and not self.force_null_conditioning:
            conditioning_key = None
        ckpt_path = kwargs.pop("ckpt_path", None)
        reset_ema = kwargs.pop("reset_ema", False)
        reset_num_ema_updates = kwargs.pop("reset_num_ema_updates", False)
        ignore_keys = kwargs.pop("ignore_keys", [])
        lora_config = kwargs.pop("lora_config", None)
        super().__init__(conditioning_key=conditioning_key, *args, **kwargs)
        self.concat_mode = concat_mode
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        try:
            self.num_downs = len(first_stage_config.params.ddconfig.ch_mult) - 1
        except (AttributeError, KeyError, TypeError):
            self.num_downs = 0
        if not scale_by_std:
            self.scale_factor = scale_factor
        else:
            self.register_buffer("scale_factor", torch.tensor(scale_factor))
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.cond_stage_forward = cond_stage_forward
        self.clip_denoised = False
        self.bbox_tokenizer = None
        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)
            self.restarted_from_ckpt = True
        self.add_lora_layers(lora_config)
        self._reset_ema_after_loading(ckpt_path, reset_ema, reset_num_ema_updates)

    # -- schedule ---------------------------------------------------------------------------
    def make_cond_schedule(self) -> None:
        """Timesteps at which a trainable conditioning is noised when ``num_timesteps_cond`` > 1."""
        self.cond_ids = torch.full(size=(self.num_timesteps,), fill_value=self.num_timesteps - 1, dtype=torch.long)
        ids = torch.round(torch.linspace(0, self.num_timesteps - 1, self.num_timesteps_cond)).long()
        self.cond_ids[:self.num_timesteps_cond] = ids

    def register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000,
                          linear_start=1e-4, linear_end=2e-2, cosine_s=8e-3) -> None:
        super().register_schedule(given_betas, beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        self.shorten_cond_schedule = self.num_timesteps_cond > 1
        if self.shorten_cond_schedule:
            self.make_cond_schedule()

    # -- the two stages ---------------------------------------------------------------------
    def instantiate_first_stage(self, config) -> None:
        self.first_stage_model = freeze_module(instantiate_from_config(config))

    def preloaded_prefixes(self) -> Tuple[str, ...]:
        """State-dict prefixes of components that loaded their own weights at construction (a
        first stage whose config names a ``ckpt_path`` that exists): a checkpoint may leave them
        out."""
        return ("first_stage_model.",) if getattr(self.first_stage_model, "ckpt_loaded_from", None) else ()

    def instantiate_cond_stage(self, config) -> None:
        """Build the conditioning encoder: frozen unless ``cond_stage_trainable``;
        ``__is_first_stage__`` reuses the autoencoder, ``__is_unconditional__`` means none."""
        special = config if isinstance(config, str) else None
        if self.cond_stage_trainable:
            if special is not None:
                raise ValueError(f"cond_stage_config '{special}' cannot be trainable")
            self.cond_stage_model = instantiate_from_config(config)
        elif special == "__is_first_stage__":
            print("Using first stage also as cond stage.")
            self.cond_stage_model = self.first_stage_model
        elif special == "__is_unconditional__":
            print(f"Training {self.__class__.__name__} as an unconditional model.")
            self.cond_stage_model = None
        else:
            self.cond_stage_model = freeze_module(instantiate_from_config(config))

    def get_first_stage_encoding(self, encoder_posterior) -> torch.Tensor:
        """A latent: a sample of the autoencoder posterior (or the tensor itself) times ``scale_factor``."""
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        elif isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        else:
            raise NotImplementedError(f"encoder_posterior of type '{type(encoder_posterior)}' not yet implemented")
        return self.scale_factor * z

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor):
        return self.first_stage_model.encode(x)

    def _decode(self, z: torch.Tensor, predict_cids: bool, force_not_quantize: bool) -> torch.Tensor:
        if predict_cids:
            if z.dim() == 4:
                z = torch.argmax(z.exp(), dim=1).long()
            z = self.first_stage_model.quantize.get_codebook_entry(z, shape=None)
            z = rearrange(z, "b h w c -> b c h w").contiguous()
        z = 1.0 / self.scale_factor * z
        decode = self.first_stage_model.decode
        if "force_not_quantize" in inspect.signature(decode).parameters:  # VQ first stages
            decode = functools.partial(decode, force_not_quantize=predict_cids or force_not_quantize)
        if getattr(self, "split_input_params", {}).get("patch_distributed_vq"):
            return self.decode_in_patches(z, decode)
        return decode(z)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Images from latents: the autoencoder's decoder applied to ``z / scale_factor``."""
        return self._decode(z, predict_cids, force_not_quantize)

    def differentiable_decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                                          force_not_quantize: bool = False) -> torch.Tensor:
        """:meth:`decode_first_stage` with gradients."""
        return self._decode(z, predict_cids, force_not_quantize)

    def get_learned_conditioning(self, c):
        """Encode raw conditioning (prompts, images, labels) with the conditioning encoder: its
        ``encode`` when it has one (the mode of a Gaussian posterior), else its ``forward``, or the
        method named by ``cond_stage_forward``."""
        if self.cond_stage_forward is not None:
            if not hasattr(self.cond_stage_model, self.cond_stage_forward):
                raise AttributeError(f"cond_stage_forward names '{self.cond_stage_forward}', which "
                                     f"{type(self.cond_stage_model).__name__} does not have")
            return getattr(self.cond_stage_model, self.cond_stage_forward)(c)
        if callable(getattr(self.cond_stage_model, "encode", None)):
            c = self.cond_stage_model.encode(c)
            return c.mode() if isinstance(c, DiagonalGaussianDistribution) else c
        return self.cond_stage_model(c)

    @torch.no_grad()
    def get_unconditional_conditioning(self, batch_size: int, null_label=None):
        """The conditioning of "nothing" for classifier-free guidance, repeated ``batch_size`` times:
        the encoding of ``null_label`` (e.g. ``[""]``), or the class encoder's null class."""
        if null_label is not None:
            xc = list(null_label) if isinstance(null_label, ListConfig) else null_label
            if hasattr(xc, "to"):
                xc = xc.to(self.device)
            c = self.get_learned_conditioning(xc)
        elif self.cond_stage_key in CLASS_CONDITIONING_KEYS:
            xc = self.cond_stage_model.get_unconditional_conditioning(batch_size, device=self.device)
            return self.get_learned_conditioning(xc)
        else:
            raise NotImplementedError("pass null_label (e.g. [\"\"]) to build the unconditional "
                                      f"conditioning for cond_stage_key '{self.cond_stage_key}'")
        if isinstance(c, list):
            return [repeat(ci, "1 ... -> b ...", b=batch_size).to(self.device) for ci in c]
        return repeat(c, "1 ... -> b ...", b=batch_size).to(self.device)

    # -- batches ----------------------------------------------------------------------------
    def _raw_conditioning(self, batch: Mapping, cond_key: str, x: torch.Tensor):
        if cond_key == self.first_stage_key:
            return x
        if cond_key in RAW_CONDITIONING_KEYS:
            return batch[cond_key]
        if cond_key in CLASS_CONDITIONING_KEYS:
            return batch
        return DDPM.get_input(self, batch, cond_key).to(self.device)

    @torch.no_grad()
    def get_input(self, batch: Mapping, k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: Optional[str] = None,
                  return_original_cond: bool = False, bs: Optional[int] = None, return_x: bool = False):
        """``[z, c]`` for a batch: the scaled latent of ``batch[k]`` and the conditioning
        (encoded unless the encoder is trainable and ``force_c_encode`` is off); then, as asked,
        the image and its reconstruction, the image, and the raw conditioning."""
        if self.use_positional_encodings:
            raise NotImplementedError("use_positional_encodings is accepted for config compatibility but, as "
                                      "in the original code, has no implementation for latent diffusion")
        x = DDPM.get_input(self, batch, k)
        if bs is not None:
            x = x[:bs]
        x = x.to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        c = xc = None
        if self.model.conditioning_key is not None and not self.force_null_conditioning:
            xc = self._raw_conditioning(batch, default(cond_key, self.cond_stage_key), x)
            if not self.cond_stage_trainable or force_c_encode:
                is_collection = isinstance(xc, (dict, list))
                c = self.get_learned_conditioning(xc if is_collection else xc.to(self.device))
            else:
                c = xc
            if bs is not None:
                c = c[:bs]
        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_x:
            out.append(x)
        if return_original_cond:
            out.append(xc)
        return out

    def shared_step(self, batch: Mapping, **kwargs):
        x, c = self.get_input(batch, self.first_stage_key)
        return self(x, c)

    def forward(self, x: torch.Tensor, c, *args, **kwargs):
        """Training loss at a random timestep per sample; a trainable conditioning is encoded
        here (and noised to its own short schedule when ``num_timesteps_cond`` > 1)."""
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=self.device).long()
        if self.model.conditioning_key is not None:
            if c is None:
                raise ValueError(f"conditioning_key '{self.model.conditioning_key}' needs a conditioning, got None")
            if self.cond_stage_trainable:
                c = self.get_learned_conditioning(c)
            if self.shorten_cond_schedule:
                tc = self.cond_ids[t.cpu()].to(self.device)
                c = self.q_sample(x_start=c, t=tc, noise=torch.randn_like(c.float()))
        return self.p_losses(x, c, t, *args, **kwargs)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond, return_ids: bool = False):
        """The network's output for ``x_noisy`` at ``t``. ``cond`` is a dict of keyword arguments
        for :class:`DiffusionWrapper` (``c_concat``, ``c_crossattn``, ``c_adm``), or a tensor/list
        put under ``c_concat`` (concat models) or ``c_crossattn`` (all others)."""
        if not isinstance(cond, dict):
            cond = cond if isinstance(cond, list) else [cond]
            key = "c_concat" if self.model.conditioning_key == "concat" else "c_crossattn"
            cond = {key: cond}
        if hasattr(self, "split_input_params"):
            if return_ids:
                raise NotImplementedError("split_input_params: return_ids is not supported patch-wise")
            return self.apply_model_in_patches(x_noisy, t, cond)
        x_recon = self.model(x_noisy, t, **cond)
        if isinstance(x_recon, tuple) and not return_ids:
            return x_recon[0]
        return x_recon

    def p_losses(self, x_start: torch.Tensor, cond, t: torch.Tensor, noise: Optional[torch.Tensor] = None):
        """Simple loss per sample, weighted by a per-timestep log-variance (learned when
        ``learn_logvar``; Kendall & Gal 2017 style: l / exp(logvar_t) + logvar_t), plus
        ``original_elbo_weight`` times the variational-bound-weighted loss."""
        noise = default(noise, lambda: self.training_noise(x_start))
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)
        target = self._training_target(x_start, noise, t)
        prefix = "train" if self.training else "val"
        loss_simple = self.get_loss(model_output, target, mean=False).mean([1, 2, 3])
        loss_dict = {f"{prefix}/loss_simple": loss_simple.mean()}
        logvar_t = self.logvar[t.to(self.logvar.device)].to(self.device)
        loss = loss_simple / torch.exp(logvar_t) + logvar_t
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss.mean()
            loss_dict["logvar"] = self.logvar.data.mean()
        loss = self.l_simple_weight * loss.mean()
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    # -- training hooks ---------------------------------------------------------------------
    @torch.no_grad()
    def on_train_batch_start(self, batch, batch_idx, *args):
        """With ``scale_by_std``, on the very first batch of a fresh run set ``scale_factor`` to
        1 / std of the latents (Rombach et al. 2022, sec. G), the same on every process."""
        if not (self.scale_by_std and self.current_epoch == 0 and self.global_step == 0
                and batch_idx == 0 and not self.restarted_from_ckpt):
            return
        if float(self.scale_factor) != 1.0:
            raise ValueError("scale_by_std needs scale_factor 1.0 at the start; do not set both")
        print("### USING STD-RESCALING ###")
        x = DDPM.get_input(self, batch, self.first_stage_key).to(self.device)
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        value = 1.0 / z.flatten().std()
        if self._trainer is not None:
            value = self.trainer.strategy.broadcast(value, src=0)
        self.scale_factor.fill_(float(value))
        print(f"setting self.scale_factor to {self.scale_factor}")

    def trainable_parameters(self) -> List[torch.Tensor]:
        """The diffusion model, the conditioning encoder when trainable, ``logvar`` when learned; or
        only the LoRA layers (``lora_config``)."""
        if self.lora_layers is not None:
            return super().trainable_parameters()
        params = list(self.model.parameters())
        if self.cond_stage_trainable:
            print(f"{self.__class__.__name__}: Also optimizing conditioner params!")
            params = params + list(self.cond_stage_model.parameters())
        if self.learn_logvar:
            print("Diffusion model optimizing logvar")
            params.append(self.logvar)
        return params
