"""The vector-quantised first stage of the LDM paper (VQGAN): ``VQModel`` and the
``VQModelInterface`` latent diffusion uses (encode before, quantize in decode)."""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from ldm.models.autoencoder.base import _AutoencoderBase
from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)


class VQModel(_AutoencoderBase):
    """VQ-regularised autoencoder (VQGAN first stage): encoder, 1x1 ``quant_conv``, codebook
    ``quantize`` (:class:`~ldm.modules.vqvae.quantize.VectorQuantizer`), ``post_quant_conv``, decoder."""

    def __init__(self, ddconfig, lossconfig, n_embed: int, embed_dim: int, ckpt_path: Optional[str] = None,
                 ignore_keys: Sequence[str] = [], image_key: str = "image",
                 colorize_nlabels: Optional[int] = None, monitor: Optional[str] = None,
                 batch_resize_range: Optional[Sequence[int]] = None, scheduler_config=None,
                 lr_g_factor: float = 1.0, remap: Optional[str] = None, sane_index_shape: bool = False,
                 use_ema: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.n_embed = n_embed
        self._init_networks(image_key, ddconfig, lossconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25, remap=remap,
                                        sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self._init_logging(colorize_nlabels, monitor)
        self.batch_resize_range = batch_resize_range
        self.use_ema = use_ema
        if use_ema:
            self._init_ema()
        self.automatic_optimization = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)
        self.scheduler_config = scheduler_config
        self.lr_g_factor = lr_g_factor

    def encode(self, x: torch.Tensor):
        quant, emb_loss, info = self.quantize(self.quant_conv(self.encoder(x)))
        return quant, emb_loss, info

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """Image of a (batch, height, width) grid of codebook indices."""
        b, h, w = code_b.shape
        quant = self.quantize.get_codebook_entry(code_b.reshape(-1), (b, h, w, self.embed_dim))
        return self.decode(quant)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, ind) = self.encode(input)
        dec = self.decode(quant)
        return (dec, diff, ind) if return_pred_indices else (dec, diff)

    def get_input(self, batch: Mapping, k: str) -> torch.Tensor:
        """As the KL model, plus per-batch bicubic resizing to a random multiple of 16 in
        ``batch_resize_range`` (the largest size for the first five steps)."""
        x = super().get_input(batch, k)
        if self.batch_resize_range is not None:
            lower_size, upper_size = self.batch_resize_range[0], self.batch_resize_range[1]
            if self.global_step <= 4:
                new_resize = upper_size
            else:
                new_resize = np.random.choice(np.arange(lower_size, upper_size + 16, 16))
            if new_resize != x.shape[2]:
                x = F.interpolate(x, size=int(new_resize), mode="bicubic")
            x = x.detach()
        return x

    def _training_loss(self, inputs: torch.Tensor, outputs: tuple, optimizer_idx: int, step: int) -> tuple:
        xrec, qloss = outputs
        return self.loss(qloss, inputs, xrec, optimizer_idx, step, last_layer=self.get_last_layer(), split="train")

    def _log_training(self, name: str, loss: torch.Tensor, log_dict: Dict[str, torch.Tensor]) -> None:
        self.log_dict(log_dict, prog_bar=False, logger=True, on_step=True, on_epoch=True)

    def _validation_step(self, batch, batch_idx: int, suffix: str = "") -> Dict[str, torch.Tensor]:
        x = self.get_input(batch, self.image_key)
        xrec, qloss, ind = self(x, return_pred_indices=True)
        split = "val" + suffix
        aeloss, log_dict_ae = self.loss(qloss, x, xrec, 0, self.optimizer_updates, last_layer=self.get_last_layer(),
                                        split=split, predicted_indices=ind)
        rec_loss = log_dict_ae.pop(f"{split}/rec_loss")
        for name, value in (("rec_loss", rec_loss), ("aeloss", aeloss)):
            self.log(f"{split}/{name}", value, prog_bar=True, logger=True, on_step=False, on_epoch=True, sync_dist=True)
        self.log_dict(log_dict_ae)
        log_dict = {f"{split}/rec_loss": rec_loss, f"{split}/aeloss": aeloss, **log_dict_ae}
        if self._has_discriminator():
            _, log_dict_disc = self.loss(qloss, x, xrec, 1, self.optimizer_updates, last_layer=self.get_last_layer(),
                                         split=split, predicted_indices=ind)
            self.log_dict(log_dict_disc)
            log_dict.update(log_dict_disc)
        return log_dict

    def configure_optimizers(self):
        """Adam(betas (0.5, 0.9)): autoencoder + codebook at ``lr_g_factor * learning_rate``,
        discriminator at ``learning_rate``; ``scheduler_config`` adds per-step LambdaLR multipliers."""
        self._check_can_train()
        lr_d = self.learning_rate
        lr_g = self.lr_g_factor * self.learning_rate
        ae_params = (list(self.encoder.parameters()) + list(self.decoder.parameters())
                     + list(self.quantize.parameters()) + list(self.quant_conv.parameters())
                     + list(self.post_quant_conv.parameters()))
        optimizers = [torch.optim.Adam(ae_params, lr=lr_g, betas=(0.5, 0.9))]
        if self._has_discriminator():
            optimizers.append(torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr_d, betas=(0.5, 0.9)))
        if self.scheduler_config is None:
            return optimizers, []
        multiplier = instantiate_from_config(self.scheduler_config)
        schedulers = [{"scheduler": LambdaLR(opt, lr_lambda=multiplier.schedule), "interval": "step", "frequency": 1}
                      for opt in optimizers]
        return optimizers, schedulers

    @torch.no_grad()
    def log_images(self, batch, only_inputs: bool = False, plot_ema: bool = False, **kwargs) -> Dict[str, torch.Tensor]:
        log = dict()
        x = self.get_input(batch, self.image_key).to(self.device)
        if only_inputs:
            log["inputs"] = x
            return log
        xrec, _ = self(x)
        if x.shape[1] > 3:
            x, xrec = self.to_rgb(x), self.to_rgb(xrec)
        log["inputs"] = x
        log["reconstructions"] = xrec
        if plot_ema:
            with self.ema_scope():
                xrec_ema, _ = self(x)
                log["reconstructions_ema"] = self.to_rgb(xrec_ema) if x.shape[1] > 3 else xrec_ema
        return log


class VQModelInterface(VQModel):
    """The VQ first stage as latent diffusion uses it: ``encode`` stops before quantization,
    ``decode`` quantizes first (unless ``force_not_quantize``)."""

    def __init__(self, embed_dim: int, *args, **kwargs):
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

