"""First-stage autoencoders of latent diffusion: the KL-regularised ``AutoencoderKL`` (Stable
Diffusion's VAE), the vector-quantised ``VQModel`` / ``VQModelInterface`` of the LDM paper
(Rombach et al. 2022, sec. 3.1) and ``IdentityFirstStage``.

Training uses Lightning's manual optimization: each batch takes one autoencoder step and, when
the loss has a ``discriminator``, one discriminator step, as the original's two optimizers did.
The loss is called with the original convention
``loss(inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer=..., split=...)``
(VQ: ``loss(codebook_loss, inputs, reconstructions, optimizer_idx, global_step, ...)``).
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.ema import LitEma
from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.util import in_cwd_or_repository, instantiate_from_config, load_checkpoint

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Tiled processing of large inputs
# ---------------------------------------------------------------------------------------------
def _tile_starts(length: int, tile: int, overlap: int, align: int) -> List[int]:
    """Offsets of the fewest evenly spread tiles of size ``tile`` that cover [0, length) with
    neighbours sharing at least ``overlap``; offsets are multiples of ``align``."""
    if length <= tile:
        return [0]
    max_stride = max(align, (tile - overlap) // align * align)
    n_tiles = 1 + math.ceil((length - tile) / max_stride)
    return [(i * (length - tile) // (n_tiles - 1)) // align * align for i in range(n_tiles - 1)] + [length - tile]


def _smallest_tile(length: int, tile: int, overlap: int, align: int) -> int:
    """The smallest tile size that covers ``length`` with as few tiles as ``tile`` needs (same
    overlap): with 3 tiles of 64 for 128 latent pixels, 54 will do, 29% less to decode."""
    if length <= tile:
        return length
    count = len(_tile_starts(length, tile, overlap, align))
    smallest = min(tile, math.ceil((length + (count - 1) * overlap) / count))
    while len(_tile_starts(length, smallest, overlap, align)) > count:
        smallest += 1
    return smallest


def _axis_weights(starts: Sequence[int], index: int, tile: int, scale: float) -> torch.Tensor:
    """Blending weights along one axis of tile ``index`` (in output samples): 1 where it is
    alone, a linear cross-fade over each overlap with a neighbour (the two ramps sum to 1)."""
    size = round(tile * scale)
    weights = torch.ones(size)
    if index > 0:
        ramp = round((starts[index - 1] + tile - starts[index]) * scale)
        if ramp > 0:
            weights[:ramp] = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
    if index < len(starts) - 1:
        ramp = round((starts[index] + tile - starts[index + 1]) * scale)
        if ramp > 0:
            falling = torch.arange(ramp, 0, -1, dtype=torch.float32) / (ramp + 1)
            weights[size - ramp:] = torch.minimum(weights[size - ramp:], falling)
    return weights


def blend_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                overlap: int, align: int = 1) -> torch.Tensor:
    """Apply ``fn`` (a resolution-changing map such as a decoder) to overlapping square tiles of
    ``x`` and cross-fade the outputs linearly over the overlaps, so that peak memory is set by
    the tile, not the image. Tiles are at most ``tile`` and as small as their number allows.
    One tile covering ``x`` gives exactly ``fn(x)``."""
    height, width = x.shape[-2:]
    tile_h, tile_w = _smallest_tile(height, tile, overlap, align), _smallest_tile(width, tile, overlap, align)
    ys = _tile_starts(height, tile_h, overlap, align)
    xs = _tile_starts(width, tile_w, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x)
    out = weight_sum = None
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            piece = fn(x[..., y0:y0 + tile_h, x0:x0 + tile_w])
            scale = piece.shape[-1] / tile_w
            if out is None:
                out_shape = piece.shape[:-2] + (round(height * scale), round(width * scale))
                out = torch.zeros(out_shape, dtype=torch.float32, device=piece.device)
                weight_sum = torch.zeros(out_shape[-2:], dtype=torch.float32, device=piece.device)
            weight = _axis_weights(ys, iy, tile_h, scale)[:, None] * _axis_weights(xs, ix, tile_w, scale)[None, :]
            weight = weight.to(piece.device)
            oy, ox = round(y0 * scale), round(x0 * scale)
            out[..., oy:oy + piece.shape[-2], ox:ox + piece.shape[-1]] += piece.float() * weight
            weight_sum[oy:oy + piece.shape[-2], ox:ox + piece.shape[-1]] += weight
    return (out / weight_sum).to(piece.dtype)


# ---------------------------------------------------------------------------------------------
# What the KL and VQ autoencoders share
# ---------------------------------------------------------------------------------------------
def _drop_ignored_keys(state_dict: Mapping[str, torch.Tensor], ignore_keys: Sequence[str]) -> Dict[str, torch.Tensor]:
    kept = {}
    for key, value in state_dict.items():
        if any(key.startswith(prefix) for prefix in ignore_keys):
            logger.info("Deleting key %s from state_dict.", key)
        else:
            kept[key] = value
    return kept


def _unnest_first_stage(state_dict: Mapping[str, torch.Tensor], own_keys) -> Dict[str, torch.Tensor]:
    """Accept a whole latent-diffusion checkpoint too: use its ``first_stage_model.*`` part
    when none of its keys is one of ours."""
    prefix = "first_stage_model."
    if any(key in own_keys for key in state_dict) or not any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict)
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


class _AutoencoderBase(pl.LightningModule):
    """Checkpoint loading, EMA scope, batch handling and the manual GAN optimisation step of the
    first-stage models. Registers no parameters itself, so subclasses keep the original layout."""

    accumulate_grad_batches: int = 1  # Lightning cannot accumulate under manual optimization

    def _register_colorize(self, colorize_nlabels: Optional[int]) -> None:
        if colorize_nlabels is not None:
            if not isinstance(colorize_nlabels, int):
                raise TypeError(f"colorize_nlabels must be an int, got {colorize_nlabels!r}")
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = list()) -> None:
        """Load weights from ``path`` (.ckpt or .safetensors, bare or wrapped state dict, or a
        whole latent-diffusion checkpoint), leaving out keys starting with ``ignore_keys``.
        A missing file only warns, so configs naming an absent first-stage file still build
        (the full model checkpoint loaded afterwards carries these weights). A relative path is
        also looked up from the repository root; ``ckpt_loaded_from`` records a load."""
        path = in_cwd_or_repository(path)
        if not os.path.isfile(path):
            warnings.warn(f"first-stage checkpoint {path} not found; keeping freshly initialised weights")
            return
        state_dict, _ = load_checkpoint(path)
        self.ckpt_loaded_from = path
        state_dict = _drop_ignored_keys(_unnest_first_stage(state_dict, self.state_dict()), ignore_keys)
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        logger.info("Restored from %s with %d missing and %d unexpected keys", path, len(missing), len(unexpected))
        if missing:
            warnings.warn(f"{path}: {len(missing)} autoencoder tensors missing (e.g. {missing[0]})")

    @contextmanager
    def ema_scope(self, context: Optional[str] = None):
        """Run the enclosed code with the EMA weights (no-op without EMA), then restore."""
        if self.use_ema:
            self.model_ema.store(self.parameters())
            self.model_ema.copy_to(self)
            if context is not None:
                logger.info("%s: Switched to EMA weights", context)
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.parameters())
                if context is not None:
                    logger.info("%s: Restored training weights", context)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        if self.use_ema:
            self.model_ema(self)

    def get_input(self, batch: Mapping, k: str) -> torch.Tensor:
        """``batch[k]`` as float NCHW (datasets yield NHWC; a missing channel axis is added)."""
        x = batch[k]
        if len(x.shape) == 3:
            x = x[..., None]
        return x.permute(0, 3, 1, 2).to(memory_format=torch.contiguous_format).float()

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """Project a many-channel segmentation to 3 channels with a fixed random map, in [-1, 1]."""
        if self.image_key != "segmentation":
            raise ValueError(f"to_rgb is for segmentation inputs (image_key 'segmentation'), not '{self.image_key}'")
        if not hasattr(self, "colorize"):
            self.register_buffer("colorize", torch.randn(3, x.shape[1], 1, 1).to(x))
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0

    # -- training ----------------------------------------------------------------------------
    def _has_discriminator(self) -> bool:
        return hasattr(self.loss, "discriminator")

    def _check_can_train(self) -> None:
        if isinstance(self.loss, nn.Identity):
            raise RuntimeError("this autoencoder was built with lossconfig torch.nn.Identity (an inference "
                               "config); training needs a loss such as ldm.modules.losses.LPIPSWithDiscriminator")
        if not hasattr(self, "learning_rate"):
            raise RuntimeError("set model.learning_rate before training (main.py derives it from base_learning_rate)")

    @property
    def optimizer_updates(self) -> int:
        """Number of parameter updates so far, counting the autoencoder and discriminator steps of
        one batch once (Lightning's ``global_step`` counts every optimizer's step); this is the
        ``global_step`` the original code passed to the loss."""
        if self._trainer is None:
            return 0
        return self.global_step // max(len(self.trainer.optimizers), 1)

    def _optimizers_and_schedulers(self) -> Tuple[list, list]:
        optimizers = self.optimizers()
        optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        schedulers = self.lr_schedulers()
        if schedulers is None:
            schedulers = []
        schedulers = list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]
        return optimizers, schedulers + [None] * (len(optimizers) - len(schedulers))

    def _optimize(self, optimizer, scheduler, compute_loss: Callable[[], tuple], batch_idx: int) -> tuple:
        """One manual step: only ``optimizer``'s parameters require grad while the loss is built
        (Lightning's toggling, as with the original's two optimizers); gradients accumulate over
        ``accumulate_grad_batches`` batches before the step and the per-step LR scheduler."""
        self.toggle_optimizer(optimizer)
        loss, log_dict = compute_loss()
        self.manual_backward(loss / self.accumulate_grad_batches)
        if (batch_idx + 1) % self.accumulate_grad_batches == 0:
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
        self.untoggle_optimizer(optimizer)
        return loss, log_dict


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
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig.double_z: true (the encoder outputs mean and log-variance)")
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim
        self._register_colorize(colorize_nlabels)
        if monitor is not None:
            self.monitor = monitor

        self.use_ema = ema_decay is not None
        if self.use_ema:
            if not 0.0 < ema_decay < 1.0:
                raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}")
            self.ema_decay = ema_decay
            self.model_ema = LitEma(self, decay=ema_decay)
            logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))

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
        tile, overlap = (tile_size or self.tile_size) * factor, (overlap if overlap is not None else self.tile_overlap) * factor
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

    def training_step(self, batch, batch_idx: int):
        """One autoencoder step (optimizer_idx 0) then, with a discriminator, one discriminator
        step (optimizer_idx 1) on a fresh reconstruction by the updated autoencoder, as the
        original's second ``training_step`` call did."""
        self._check_can_train()
        inputs = self.get_input(batch, self.image_key)
        step = self.optimizer_updates
        (opt_ae, *opt_disc), (sched_ae, *sched_disc) = self._optimizers_and_schedulers()

        reconstructions, posterior = self(inputs)
        aeloss, log_dict_ae = self._optimize(opt_ae, sched_ae, lambda: self.loss(
            inputs, reconstructions, posterior, 0, step, last_layer=self.get_last_layer(), split="train"), batch_idx)
        self.log("aeloss", aeloss, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log_dict(log_dict_ae, prog_bar=False, logger=True, on_step=True, on_epoch=False)
        if not opt_disc:
            return aeloss

        with torch.no_grad():
            reconstructions, posterior = self(inputs)
        discloss, log_dict_disc = self._optimize(opt_disc[0], sched_disc[0], lambda: self.loss(
            inputs, reconstructions, posterior, 1, step, last_layer=self.get_last_layer(), split="train"), batch_idx)
        self.log("discloss", discloss, prog_bar=True, logger=True, on_step=True, on_epoch=True)
        self.log_dict(log_dict_disc, prog_bar=False, logger=True, on_step=True, on_epoch=False)
        return aeloss

    def validation_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        log_dict = self._validation_step(batch, batch_idx)
        if self.use_ema:
            with self.ema_scope():
                self._validation_step(batch, batch_idx, postfix="_ema")
        return log_dict

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
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25, remap=remap,
                                        sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self._register_colorize(colorize_nlabels)
        if monitor is not None:
            self.monitor = monitor
        self.batch_resize_range = batch_resize_range
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self)
            logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))
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

    def training_step(self, batch, batch_idx: int):
        """Autoencoder step then, with a discriminator, a discriminator step on a fresh
        reconstruction (see :meth:`AutoencoderKL.training_step`)."""
        self._check_can_train()
        x = self.get_input(batch, self.image_key)
        step = self.optimizer_updates
        (opt_ae, *opt_disc), (sched_ae, *sched_disc) = self._optimizers_and_schedulers()

        xrec, qloss = self(x)
        aeloss, log_dict_ae = self._optimize(opt_ae, sched_ae, lambda: self.loss(
            qloss, x, xrec, 0, step, last_layer=self.get_last_layer(), split="train"), batch_idx)
        self.log_dict(log_dict_ae, prog_bar=False, logger=True, on_step=True, on_epoch=True)
        if not opt_disc:
            return aeloss

        with torch.no_grad():
            xrec, qloss = self(x)
        _, log_dict_disc = self._optimize(opt_disc[0], sched_disc[0], lambda: self.loss(
            qloss, x, xrec, 1, step, last_layer=self.get_last_layer(), split="train"), batch_idx)
        self.log_dict(log_dict_disc, prog_bar=False, logger=True, on_step=True, on_epoch=True)
        return aeloss

    def validation_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        log_dict = self._validation_step(batch, batch_idx)
        if self.use_ema:
            with self.ema_scope():
                self._validation_step(batch, batch_idx, suffix="_ema")
        return log_dict

    def _validation_step(self, batch, batch_idx: int, suffix: str = "") -> Dict[str, torch.Tensor]:
        x = self.get_input(batch, self.image_key)
        xrec, qloss, ind = self(x, return_pred_indices=True)
        split = "val" + suffix
        aeloss, log_dict_ae = self.loss(qloss, x, xrec, 0, self.optimizer_updates, last_layer=self.get_last_layer(),
                                        split=split, predicted_indices=ind)
        rec_loss = log_dict_ae.pop(f"{split}/rec_loss")
        self.log(f"{split}/rec_loss", rec_loss, prog_bar=True, logger=True, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}/aeloss", aeloss, prog_bar=True, logger=True, on_step=False, on_epoch=True, sync_dist=True)
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


class IdentityFirstStage(nn.Module):
    """A first stage that does nothing (diffusion directly in pixel space)."""

    def __init__(self, *args, vq_interface: bool = False, **kwargs):
        self.vq_interface = vq_interface
        super().__init__()

    def encode(self, x, *args, **kwargs):
        return x

    def decode(self, x, *args, **kwargs):
        return x

    def quantize(self, x, *args, **kwargs):
        if self.vq_interface:
            return x, None, [None, None, None]
        return x

    def forward(self, x, *args, **kwargs):
        return x
