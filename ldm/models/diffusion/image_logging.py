"""Images for the training logger (``main.ImageLogger`` calls ``model.log_images``): inputs,
reconstructions, conditioning, diffusion and denoising rows, samples. Mixed into DDPM and
LatentDiffusion; kept apart because it is the noisiest and least numerical part of the models."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from ldm.util import isimage, ismap, log_txt_as_img, make_grid

CLASS_CONDITIONING_KEYS = ("class_label", "cls")


def rows_grid(samples: List[torch.Tensor]) -> torch.Tensor:
    """Grid of a denoising/diffusion trajectory: one row per batch element, one column per step."""
    stacked = torch.stack(samples)  # n_steps, b, c, h, w
    flat = rearrange(stacked, "n b c h w -> (b n) c h w")
    return make_grid(flat, nrow=stacked.shape[0])


class DiffusionImageLogging:
    """``log_images`` of the pixel-space DDPM."""

    def _get_rows_from_list(self, samples: List[torch.Tensor]) -> torch.Tensor:
        return rows_grid(samples)

    def _diffusion_row(self, x_start: torch.Tensor) -> List[torch.Tensor]:
        """``x_start`` noised to every ``log_every_t``-th step (and the last)."""
        row = []
        for step in range(self.num_timesteps):
            if step % self.log_every_t == 0 or step == self.num_timesteps - 1:
                t = torch.full((x_start.shape[0],), step, device=self.device, dtype=torch.long)
                row.append(self.q_sample(x_start=x_start, t=t, noise=torch.randn_like(x_start)))
        return row

    @staticmethod
    def _select_keys(log: Dict[str, Any], return_keys) -> Dict[str, Any]:
        if return_keys and any(key in log for key in return_keys):
            return {key: log[key] for key in return_keys if key in log}
        return log

    @torch.no_grad()
    def log_images(self, batch, N: int = 8, n_row: int = 2, sample: bool = True, return_keys=None, **kwargs):
        """Inputs, a diffusion row and (with ``sample``) samples with their denoising row."""
        log = dict()
        x = self.get_input(batch, self.first_stage_key)
        N = min(x.shape[0], N)
        n_row = min(x.shape[0], n_row)
        x = x.to(self.device)[:N]
        log["inputs"] = x
        log["diffusion_row"] = self._get_rows_from_list(self._diffusion_row(x[:n_row]))
        if sample:
            with self.ema_scope("Plotting"):
                samples, denoise_row = self.sample(batch_size=N, return_intermediates=True)
            log["samples"] = samples
            log["denoise_row"] = self._get_rows_from_list(denoise_row)
        return self._select_keys(log, return_keys)


class LatentImageLogging:
    """``log_images`` of LatentDiffusion and of its task subclasses: one method, whose parts the
    tasks adjust through hooks (:meth:`_log_images_input`: how the batch is read and which images
    of their own they log; :meth:`_task_log_images`; :meth:`_log_unconditional_conditioning`)
    and through their keyword defaults (``functools.partialmethod``, as the originals' signatures
    had them)."""

    #: the log key of the guided samples, formatted with the guidance scale
    guided_samples_key = "samples_cfg_scale_{:.2f}"

    @torch.no_grad()
    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """A fixed random 1x1 projection of a many-channel map to RGB in [-1, 1], for viewing."""
        x = x.float()
        if not hasattr(self, "colorize"):
            self.colorize = torch.randn(3, x.shape[1], 1, 1).to(x)
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    def _get_denoise_row_from_list(self, samples, desc: str = "", force_no_decoder_quantization: bool = False):
        decoded = [self.decode_first_stage(zd.to(self.device), force_not_quantize=force_no_decoder_quantization)
                   for zd in tqdm(samples, desc=desc)]
        return rows_grid(decoded)

    def _log_conditioning(self, log: Dict[str, Any], batch: Mapping, x: torch.Tensor, c, xc) -> None:
        """What the model was conditioned on, as images (captions are rendered as text)."""
        if self.model.conditioning_key is None:
            return
        font_size = max(1, x.shape[2] // 25)
        if hasattr(self.cond_stage_model, "decode"):
            log["conditioning"] = self.cond_stage_model.decode(c)
        elif self.cond_stage_key in ("caption", "txt") and not isinstance(xc, torch.Tensor):
            log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch[self.cond_stage_key], size=font_size)
        elif self.cond_stage_key in CLASS_CONDITIONING_KEYS:
            if "human_label" in batch:
                log["conditioning"] = log_txt_as_img((x.shape[2], x.shape[3]), batch["human_label"], size=font_size)
        elif isimage(xc):
            log["conditioning"] = xc
        if ismap(xc):
            log["original_conditioning"] = self.to_rgb(xc)

    def _decoded_diffusion_row(self, z: torch.Tensor) -> torch.Tensor:
        return rows_grid([self.decode_first_stage(zt) for zt in self._diffusion_row(z)])

    def _log_images_input(self, batch: Mapping, N: int) -> Tuple[Any, ...]:
        """``(z, c, x, xrec, xc, entries)`` of the first ``N`` batch elements: latents, the
        conditioning as the sampler takes it, images, reconstructions, the raw conditioning, and
        the images the task logs besides (:meth:`_task_log_images`)."""
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                           force_c_encode=True, return_original_cond=True, bs=N)
        return z, c, x, xrec, xc, self._task_log_images(batch, c)

    def _task_log_images(self, batch: Mapping, c) -> Dict[str, torch.Tensor]:
        """Images a task logs besides the common ones (the inpainting mask, a depth map ...)."""
        return {}

    def _log_unconditional_conditioning(self, c, N: int, label):
        """The unconditional conditioning of guided samples: the encoded ``label`` in place of the
        text; other conditioning (concatenated channels, ``c_adm``) stays as in ``c``."""
        uc = self.get_unconditional_conditioning(N, label)
        return dict(c, c_crossattn=[uc]) if isinstance(c, dict) else uc

    @torch.no_grad()
    def log_images(self, batch, N=8, n_row=4, sample=True, ddim_steps=50, ddim_eta=0., return_keys=None,
                   quantize_denoised=True, inpaint=True, plot_denoise_rows=False, plot_progressive_rows=True,
                   plot_diffusion_rows=True, unconditional_guidance_scale=1., unconditional_guidance_label=None,
                   use_ema_scope=True, **kwargs):
        """Images for the training logger: inputs, reconstructions, conditioning, the task's own
        images, a diffusion row, samples (DDIM with ``ddim_steps`` steps, ancestral when None),
        guided samples (``unconditional_guidance_scale`` > 1), in/outpainting, progressive rows.

        Every sampling run here starts from the same noise, that of seeds 0 .. N-1
        (:meth:`sample_log`), so that the grids logged in the course of training are comparable."""
        ema_scope = self.ema_scope if use_ema_scope else nullcontext
        z, c, x, xrec, xc, task_images = self._log_images_input(batch, N)
        N = min(x.shape[0], N)
        n_row = min(x.shape[0], n_row)
        log = {"inputs": x, "reconstruction": xrec}
        self._log_conditioning(log, batch, x, c["c_crossattn"][0] if isinstance(c, dict) else c, xc)
        log.update(task_images)
        if plot_diffusion_rows:
            log["diffusion_row"] = self._decoded_diffusion_row(z[:n_row])
        sampling = dict(batch_size=N, ddim=ddim_steps is not None, ddim_steps=ddim_steps, eta=ddim_eta)
        if sample:
            with ema_scope("Sampling"):
                samples, z_denoise_row = self.sample_log(cond=c, **sampling)
            log["samples"] = self.decode_first_stage(samples)
            if plot_denoise_rows:
                log["denoise_row"] = self._get_denoise_row_from_list(z_denoise_row)
            if quantize_denoised and hasattr(self.first_stage_model, "quantize"):
                with ema_scope("Plotting Quantized Denoised"):
                    samples, _ = self.sample_log(cond=c, quantize_denoised=True, **sampling)
                log["samples_x0_quantized"] = self.decode_first_stage(samples.to(self.device))
        if unconditional_guidance_scale > 1.0:
            uc = self._log_unconditional_conditioning(c, N, unconditional_guidance_label)
            with ema_scope("Sampling with classifier-free guidance"):
                samples_cfg, _ = self.sample_log(cond=c, unconditional_guidance_scale=unconditional_guidance_scale,
                                                 unconditional_conditioning=uc, **sampling)
            log[self.guided_samples_key.format(unconditional_guidance_scale)] = self.decode_first_stage(samples_cfg)
        if inpaint:
            self._log_inpainting(log, z, c, N, ema_scope, sampling)
        if plot_progressive_rows:
            with ema_scope("Plotting Progressives"):
                _, progressives = self.progressive_denoising(
                    c, shape=(self.channels, self.image_size, self.image_size), batch_size=N)
            log["progressive_row"] = self._get_denoise_row_from_list(progressives, desc="Progressive Generation")
        return self._select_keys(log, return_keys)

    def _log_inpainting(self, log, z, c, N, ema_scope, sampling) -> None:
        """Fill a centre square of the latent (inpainting), then everything but it (outpainting)."""
        h, w = z.shape[2], z.shape[3]
        mask = torch.ones(N, h, w, device=self.device)
        mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 0.0
        mask = mask[:, None, ...]
        with ema_scope("Plotting Inpaint"):
            samples, _ = self.sample_log(cond=c, x0=z[:N], mask=mask, **sampling)
        log["samples_inpainting"] = self.decode_first_stage(samples.to(self.device))
        log["mask"] = mask
        with ema_scope("Plotting Outpaint"):
            samples, _ = self.sample_log(cond=c, x0=z[:N], mask=1.0 - mask, **sampling)
        log["samples_outpainting"] = self.decode_first_stage(samples.to(self.device))
