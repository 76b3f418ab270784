"""GAN loss helpers and the VQ autoencoder loss: pixel + LPIPS reconstruction, codebook loss and a
PatchGAN adversarial term with the adaptive weight of VQGAN (Esser et al. 2021, eq. 7)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.losses.discriminator import NLayerDiscriminator, weights_init
from ldm.modules.losses.lpips import perceptual_loss_or_none


class DummyLoss(nn.Module):
    """A loss with no parameters and no use: lets configs that name it build the model."""


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` before ``threshold`` steps, ``weight`` from then on (discriminator start)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss 0.5 (E[softplus(-D(x))] + E[softplus(D(G(z)))])."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def hinge_d_loss_with_exemplar_weights(logits_real: torch.Tensor, logits_fake: torch.Tensor,
                                       weights: torch.Tensor) -> torch.Tensor:
    """Hinge loss with a weight per example (weighted mean over the batch)."""
    if not weights.shape[0] == logits_real.shape[0] == logits_fake.shape[0]:
        raise ValueError("weights, logits_real and logits_fake need the same batch size")
    loss_real = torch.mean(F.relu(1.0 - logits_real), dim=[1, 2, 3])
    loss_fake = torch.mean(F.relu(1.0 + logits_fake), dim=[1, 2, 3])
    loss_real = (weights * loss_real).sum() / weights.sum()
    loss_fake = (weights * loss_fake).sum() / weights.sum()
    return 0.5 * (loss_real + loss_fake)


def measure_perplexity(predicted_indices: torch.Tensor, n_embed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Codebook perplexity exp(H(p)) of the code usage p, and the number of codes used. It equals
    ``n_embed`` when all codes are used equally often."""
    encodings = F.one_hot(predicted_indices, n_embed).float().reshape(-1, n_embed)
    avg_probs = encodings.mean(0)
    perplexity = (-(avg_probs * torch.log(avg_probs + 1e-10)).sum()).exp()
    cluster_use = torch.sum(avg_probs > 0)
    return perplexity, cluster_use


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.abs(x - y)


def l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.pow(x - y, 2)


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def disc_loss_by_name(name: str):
    if name not in D_LOSSES:
        raise ValueError(f"disc_loss must be one of {sorted(D_LOSSES)}, got {name!r}")
    return D_LOSSES[name]


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """lambda = ||grad_L(nll)|| / (||grad_L(g)|| + 1e-4), clamped to [0, 1e4], times
    ``disc_weight``, with gradients at the decoder's last layer L (VQGAN eq. 7)."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


class AdversarialLossMixin:
    """What both autoencoder losses share: the reconstruction term, the discriminator's settings
    and view of (optionally conditioned) images, and the adaptive generator weight."""

    def _init_adversarial(self, disc_start: int, disc_loss: str, disc_factor: float, disc_weight: float,
                          disc_conditional: bool) -> None:
        self.discriminator_iter_start = disc_start
        self.disc_loss = disc_loss_by_name(disc_loss)
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    @staticmethod
    def _generator_log(split: str, loss: torch.Tensor, terms: Dict[str, torch.Tensor], nll_loss: torch.Tensor,
                       rec_loss: torch.Tensor, d_weight: torch.Tensor, disc_factor: float,
                       g_loss: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The logged values of an autoencoder (generator) step: the total, the loss's own
        ``terms``, then what both losses log."""
        log = {f"{split}/total_loss": loss.clone().detach().mean()}
        log.update({f"{split}/{name}": value for name, value in terms.items()})
        log.update({f"{split}/nll_loss": nll_loss.detach().mean(),
                    f"{split}/rec_loss": rec_loss.detach().mean(),
                    f"{split}/d_weight": d_weight.detach(),
                    f"{split}/disc_factor": torch.tensor(disc_factor),
                    f"{split}/g_loss": g_loss.detach().mean()})
        return log

    def _reconstruction_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor,
                             pixel_loss) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-pixel ``pixel_loss`` plus ``perceptual_weight`` times LPIPS (when weighted), and the
        LPIPS term itself (None when not computed)."""
        rec_loss = pixel_loss(inputs.contiguous(), reconstructions.contiguous())
        if self.perceptual_weight <= 0:
            return rec_loss, None
        p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
        return rec_loss + self.perceptual_weight * p_loss, p_loss

    def _logits(self, images: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        if cond is None:
            if self.disc_conditional:
                raise ValueError("this loss has disc_conditional=True: pass cond")
            return self.discriminator(images.contiguous())
        if not self.disc_conditional:
            raise ValueError("cond was given, but this loss has disc_conditional=False")
        return self.discriminator(torch.cat((images.contiguous(), cond), dim=1))

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: Optional[torch.Tensor] = None) -> torch.Tensor:
        if last_layer is None:
            last_layer = self.last_layer[0]
        return adaptive_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)

    def _generator_weight(self, nll_loss, g_loss, last_layer) -> torch.Tensor:
        """The adaptive weight; 0 in evaluation, where the graph has no gradients to compare."""
        try:
            return self.calculate_adaptive_weight(nll_loss, g_loss, last_layer=last_layer)
        except RuntimeError:
            if self.training:
                raise
            return torch.tensor(0.0)

    def _discriminator_step(self, inputs, reconstructions, global_step, cond, split):
        logits_real = self._logits(inputs.contiguous().detach(), cond)
        logits_fake = self._logits(reconstructions.contiguous().detach(), cond)
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {f"{split}/disc_loss": d_loss.clone().detach().mean(),
               f"{split}/logits_real": logits_real.detach().mean(),
               f"{split}/logits_fake": logits_fake.detach().mean()}
        return d_loss, log


class VQLPIPSWithDiscriminator(AdversarialLossMixin, nn.Module):
    """Loss of the VQ autoencoders: mean(pixel + perceptual) + codebook + adaptive-weighted GAN.

    ``lpips_path`` (ours): local LPIPS weights; default ``$LDM_LPIPS_WEIGHTS``. Without them the
    perceptual term is dropped (perceptual_weight 0) with one warning.
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 n_classes: Optional[int] = None, perceptual_loss: str = "lpips", pixel_loss: str = "l1",
                 lpips_path: Optional[str] = None):
        super().__init__()
        if perceptual_loss != "lpips":
            raise ValueError(f"Unknown perceptual loss: {perceptual_loss!r} (only 'lpips' is available)")
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight
        self.perceptual_loss, self.perceptual_weight = perceptual_loss_or_none(perceptual_weight, lpips_path)
        self.pixel_loss = l1 if pixel_loss == "l1" else l2
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm, ndf=disc_ndf).apply(weights_init)
        self._init_adversarial(disc_start, disc_loss, disc_factor, disc_weight, disc_conditional)
        self.n_classes = n_classes

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx, global_step,
                last_layer=None, cond=None, split="train", predicted_indices=None):
        if codebook_loss is None:
            codebook_loss = torch.tensor([0.0]).to(inputs.device)
        rec_loss, p_loss = self._reconstruction_loss(inputs, reconstructions, self.pixel_loss)
        if p_loss is None:
            p_loss = torch.tensor([0.0])
        nll_loss = torch.mean(rec_loss)

        if optimizer_idx == 0:
            g_loss = -torch.mean(self._logits(reconstructions, cond))
            d_weight = self._generator_weight(nll_loss, g_loss, last_layer)
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
            terms = {"quant_loss": codebook_loss.detach().mean(), "p_loss": p_loss.detach().mean()}
            log = self._generator_log(split, loss, terms, nll_loss, rec_loss, d_weight, disc_factor, g_loss)
            if predicted_indices is not None:
                if self.n_classes is None:
                    raise ValueError("predicted_indices given, but the loss has no n_classes")
                with torch.no_grad():
                    perplexity, cluster_usage = measure_perplexity(predicted_indices, self.n_classes)
                log[f"{split}/perplexity"] = perplexity
                log[f"{split}/cluster_usage"] = cluster_usage
            return loss, log
        if optimizer_idx == 1:
            return self._discriminator_step(inputs, reconstructions, global_step, cond, split)
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")
