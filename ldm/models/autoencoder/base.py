"""What the KL and VQ autoencoders share: checkpoint loading, the EMA scope, batch handling, and
the manual GAN optimisation (one autoencoder step, then one discriminator step, per batch)."""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.models.lazy_lightning import LazyLightningModule
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.ema import LitEma
from ldm.util import in_cwd_or_repository, instantiate_from_config, load_checkpoint

logger = logging.getLogger(__name__)


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


class _AutoencoderBase(LazyLightningModule):
    """Checkpoint loading, EMA scope, batch handling and the manual GAN optimisation step of the
    first-stage models. Registers no parameters itself, so subclasses keep the original layout."""

    accumulate_grad_batches: int = 1  # Lightning cannot accumulate under manual optimization

    def _init_ema(self, decay: float = 0.9999) -> None:
        """Keep an exponential moving average of the weights (``model_ema``, the original's keys)."""
        self.model_ema = LitEma(self, decay=decay)
        logger.info("Keeping EMAs of %d.", len(list(self.model_ema.buffers())))

    def _init_networks(self, image_key: str, ddconfig, lossconfig) -> None:
        """The batch key of the images, the encoder, the decoder and the loss (built in the
        original's order)."""
        self.image_key = image_key
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = instantiate_from_config(lossconfig)

    def _init_logging(self, colorize_nlabels: Optional[int], monitor: Optional[str]) -> None:
        """The fixed projection of segmentation maps to RGB (``colorize``) and the metric that
        checkpointing monitors."""
        if colorize_nlabels is not None:
            if not isinstance(colorize_nlabels, int):
                raise TypeError(f"colorize_nlabels must be an int, got {colorize_nlabels!r}")
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))
        if monitor is not None:
            self.monitor = monitor

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

    def _training_loss(self, inputs: torch.Tensor, outputs: tuple, optimizer_idx: int, step: int) -> tuple:
        """``(loss, log)`` of the autoencoder (``optimizer_idx`` 0) or discriminator (1) step for
        the model's ``outputs`` on ``inputs``, called with the loss's original convention."""
        raise NotImplementedError

    def _log_training(self, name: str, loss: torch.Tensor, log_dict: Dict[str, torch.Tensor]) -> None:
        """Log one training step's loss (``aeloss`` or ``discloss``) and the loss's values."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int):
        """One autoencoder step (optimizer_idx 0) then, with a discriminator, one discriminator
        step (optimizer_idx 1) on a fresh reconstruction by the updated autoencoder, as the
        original's second ``training_step`` call did."""
        self._check_can_train()
        inputs = self.get_input(batch, self.image_key)
        step = self.optimizer_updates
        (opt_ae, *opt_disc), (sched_ae, *sched_disc) = self._optimizers_and_schedulers()

        outputs = self(inputs)
        aeloss, log_dict_ae = self._optimize(
            opt_ae, sched_ae, lambda: self._training_loss(inputs, outputs, 0, step), batch_idx)
        self._log_training("aeloss", aeloss, log_dict_ae)
        if not opt_disc:
            return aeloss

        with torch.no_grad():
            outputs = self(inputs)
        discloss, log_dict_disc = self._optimize(
            opt_disc[0], sched_disc[0], lambda: self._training_loss(inputs, outputs, 1, step), batch_idx)
        self._log_training("discloss", discloss, log_dict_disc)
        return aeloss

    def _validation_step(self, batch, batch_idx: int, suffix: str = "") -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        """The validation losses, and with EMA the same again under the EMA weights (``val_ema/...``)."""
        log_dict = self._validation_step(batch, batch_idx)
        if self.use_ema:
            with self.ema_scope():
                self._validation_step(batch, batch_idx, "_ema")
        return log_dict
