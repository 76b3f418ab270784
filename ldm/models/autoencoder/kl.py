"""``AutoencoderKL``: Stable Diffusion's VAE, with a diagonal-Gaussian latent (Rombach et al.
2022, sec. 3.1), optional tiling of large inputs and its GAN training step."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ldm.models.autoencoder.base import _AutoencoderBase
from ldm.models.autoencoder.tiling import blend_tiles
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

logger = logging.getLogger(__name__)


class AutoencoderKL(_AutoencoderBase):
    """VAE with a diagonal-Gaussian latent: ``encode`` gives the posterior, ``decode`` the image.

    ``enable_tiling()`` makes ``encode``/``decode`` process large inputs in overlapping tiles
    cross-faded linearly: peak memory is that of one tile, but the result is an approximation,
    since GroupNorm statistics become per-tile statistics. Off by default, and ``decode`` is then
    the original maths.

    ``train_decoder_only`` (not in the originals, off by default) trains only the decoder side
    (``post_quant_conv`` and ``decoder``), as Stability AI's fine-tuned "ft-EMA/ft-MSE" VAE decoders
    were made: the encoder is frozen, so the latent space, and every diffusion model trained on
    it, stays valid while reconstructions improve.
    """

    def __init__(self, ddconfig, lossconfig, embed_dim: int, ckpt_path: Optional[str] = None,
                 ignore_keys: Sequence[str] = [], image_key: str = "image",
                 colorize_nlabels: Optional[int] = None, monitor: Optional[str] = None,
                 ema_decay: Optional[float] = None, learn_logvar: bool = False,
                 train_decoder_only: bool = False):
        super().__init__()
        self.learn_logvar = learn_logvar
        self.train_decoder_only = train_decoder_only
        self._init_networks(image_key, ddconfig, lossconfig)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder outputs mean and log-variance)")
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim
        self._init_logging(colorize_nlabels, monitor)

        self.use_ema = ema_decay is not None
        if self.use_ema:
            if not 0.0 < ema_decay < 1.0:
                raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
            self.ema_decay = ema_decay
            self._init_ema(ema_decay)

        self.automatic_optimization = False
        self.tiling = False
        self.tile_size = 64
        self.tile_overlap = 16
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)
        if train_decoder_only:   # the encoder side defines the latent space
            self.encoder.requires_grad_(False)
            self.quant_conv.requires_grad_(False)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (self.encoder.num_resolutions - 1)

    def enable_tiling(self, tile_size: int = 64, overlap: int = 16) -> None:
        """Encode/decode inputs larger than ``tile_size`` latent pixels (times the downsampling
        factor in image pixels) tile by tile, neighbours overlapping by ``overlap`` latent pixels."""
        if not 0 <= overlap < tile_size:
            raise ValueError(f"tile overlap must be in [0, tile_size), got overlap {overlap}, tile_size {tile_size}")
        self.tiling, self.tile_size, self.tile_overlap = True, tile_size, overlap

    def disable_tiling(self) -> None:
        self.tiling = False

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _decode_untiled(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        if self.tiling and max(x.shape[-2:]) > self.tile_size * self.downsampling_factor:
            return self.encode_tiled(x)
        return DiagonalGaussianDistribution(self._encode_moments(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.tiling and max(z.shape[-2:]) > self.tile_size:
            return self.decode_tiled(z)
        return self._decode_untiled(z)

    def encode_tiled(self, x: torch.Tensor, tile_size: Optional[int] = None,
                     overlap: Optional[int] = None) -> DiagonalGaussianDistribution:
        """Posterior of ``x`` from overlapping tiles (sizes in latent pixels), blending the moments."""
        factor = self.downsampling_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"tiled encoding needs height and width divisible by {factor}, got {tuple(x.shape[-2:])}")
        tile = (tile_size or self.tile_size) * factor
        overlap = (overlap if overlap is not None else self.tile_overlap) * factor
        return DiagonalGaussianDistribution(blend_tiles(self._encode_moments, x, tile, overlap, align=factor))

    def decode_tiled(self, z: torch.Tensor, tile_size: Optional[int] = None,
                     overlap: Optional[int] = None) -> torch.Tensor:
        """Image of latent ``z`` decoded in overlapping latent tiles blended linearly."""
        overlap = overlap if overlap is not None else self.tile_overlap
        return blend_tiles(self._decode_untiled, z, tile_size or self.tile_size, overlap)

    def forward(self, input: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def _training_loss(self, inputs: torch.Tensor, outputs: tuple, optimizer_idx: int, step: int) -> tuple:
        reconstructions, posterior = outputs
        return self.loss(inputs, reconstructions, posterior, optimizer_idx, step,
                         last_layer=self.get_last_layer(), split="train")

    def _log_training(self, name: str, loss: torch.Tensor, log_dict: Dict[str, torch.Tensor]) -> None:
        self.log(name, loss, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log_dict(log_dict, prog_bar=False, logger=True, on_step=True, on_epoch=False)

    def _validation_step(self, batch, batch_idx: int, postfix: str = "") -> Dict[str, torch.Tensor]:
        inputs = self.get_input(batch, self.image_key)
        reconstructions, posterior = self(inputs)
        split = "val" + postfix
        _, log_dict = self.loss(inputs, reconstructions, posterior, 0, self.optimizer_updates,
                                last_layer=self.get_last_layer(), split=split)
        self.log(f"{split}/rec_loss", log_dict[f"{split}/rec_loss"])
        self.log_dict(log_dict)
        if self._has_discriminator():
            _, log_dict_disc = self.loss(inputs, reconstructions, posterior, 1, self.optimizer_updates,
                                         last_layer=self.get_last_layer(), split=split)
            self.log_dict(log_dict_disc)
            log_dict = {**log_dict, **log_dict_disc}
        return log_dict

    def _trained_autoencoder_parameters(self) -> List[nn.Parameter]:
        """The decoder side, plus the encoder side unless ``train_decoder_only`` (frozen at
        construction); otherwise in the originals' order, which resumed optimizer states rely on."""
        if self.train_decoder_only:
            return list(self.decoder.parameters()) + list(self.post_quant_conv.parameters())
        return (list(self.encoder.parameters()) + list(self.decoder.parameters())
                + list(self.quant_conv.parameters()) + list(self.post_quant_conv.parameters()))

    def configure_optimizers(self):
        """Adam(lr, betas (0.5, 0.9)) for the autoencoder (+ the loss's logvar when
        ``learn_logvar``) and, when the loss has one, for its discriminator."""
        self._check_can_train()
        lr = self.learning_rate
        ae_params = self._trained_autoencoder_parameters()
        if self.learn_logvar:
            ae_params.append(self.loss.logvar)
        optimizers = [torch.optim.Adam(ae_params, lr=lr, betas=(0.5, 0.9))]
        if self._has_discriminator():
            optimizers.append(torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9)))
        return optimizers, []

    @torch.no_grad()
    def log_images(self, batch, only_inputs: bool = False, log_ema: bool = False, **kwargs) -> Dict[str, torch.Tensor]:
        log = dict()
        x = self.get_input(batch, self.image_key).to(self.device)
        if not only_inputs:
            xrec, posterior = self(x)
            if x.shape[1] > 3:
                x, xrec = self.to_rgb(x), self.to_rgb(xrec)
            log["samples"] = self.decode(torch.randn_like(posterior.sample()))
            log["reconstructions"] = xrec
            if log_ema or self.use_ema:
                with self.ema_scope():
                    xrec_ema, posterior_ema = self(x)
                    if x.shape[1] > 3:
                        xrec_ema = self.to_rgb(xrec_ema)
                    log["samples_ema"] = self.decode(torch.randn_like(posterior_ema.sample()))
                    log["reconstructions_ema"] = xrec_ema
        log["inputs"] = x
        return log

