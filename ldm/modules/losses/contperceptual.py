"""Loss of the KL autoencoders (Rombach et al. 2022, appendix G): a Laplace negative log-likelihood
of L1 (+ LPIPS) reconstruction with a learned scale, a KL term towards N(0, I), and a PatchGAN
adversarial term with VQGAN's adaptive weight, switched on after ``disc_start`` steps."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ldm.modules.losses.discriminator import NLayerDiscriminator, weights_init
from ldm.modules.losses.lpips import perceptual_loss_or_none
from ldm.modules.losses.vqperceptual import AdversarialLossMixin, DummyLoss, adopt_weight, l1

__all__ = ["DummyLoss", "LPIPSWithDiscriminator"]  # DummyLoss: a shipped config names it here


class LPIPSWithDiscriminator(AdversarialLossMixin, nn.Module):
    """``loss(inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer=None,
    cond=None, split="train", weights=None) -> (loss, log)``; optimizer_idx 0 is the autoencoder
    (generator) step, 1 the discriminator step.

    Generator: rec = |x - x_rec| + w_p LPIPS(x, x_rec); nll = rec / exp(logvar) + logvar (summed
    per image, averaged over the batch); loss = nll + kl_weight KL + d_weight disc_factor g_loss.
    ``lpips_path`` (ours): local LPIPS weights; default ``$LDM_LPIPS_WEIGHTS``. Without them the
    perceptual term is dropped (perceptual_weight 0) with one warning.
    """

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1.0,
                 pixelloss_weight: float = 1.0, disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 use_actnorm: bool = False, disc_conditional: bool = False, disc_loss: str = "hinge",
                 lpips_path: Optional[str] = None):
        super().__init__()
        self.kl_weight = kl_weight
        self.pixel_weight = pixelloss_weight
        self.perceptual_loss, self.perceptual_weight = perceptual_loss_or_none(perceptual_weight, lpips_path)
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm).apply(weights_init)
        self._init_adversarial(disc_start, disc_loss, disc_factor, disc_weight, disc_conditional)

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step,
                last_layer=None, cond=None, split="train", weights=None):
        rec_loss, _ = self._reconstruction_loss(inputs, reconstructions, l1)

        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = posteriors.kl()
        kl_loss = torch.sum(kl_loss) / kl_loss.shape[0]

        if optimizer_idx == 0:
            g_loss = -torch.mean(self._logits(reconstructions, cond))
            if self.disc_factor > 0.0:
                d_weight = self._generator_weight(nll_loss, g_loss, last_layer)
            else:
                d_weight = torch.tensor(0.0)
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
            terms = {"logvar": self.logvar.detach(), "kl_loss": kl_loss.detach().mean()}
            log = self._generator_log(split, loss, terms, nll_loss, rec_loss, d_weight, disc_factor, g_loss)
            return loss, log
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, cond, split)
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
