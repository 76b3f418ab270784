"""VQLPIPSWithDiscriminator and the GAN helpers: the original formulas on small tensors."""
import pytest
import torch
import torch.nn.functional as F

from ldm.modules.losses import VQLPIPSWithDiscriminator
from ldm.modules.losses.vqperceptual import (adopt_weight, hinge_d_loss, hinge_d_loss_with_exemplar_weights,
                                             measure_perplexity, vanilla_d_loss)


def decoder_output(batch=2):
    """Reconstructions from a 1x1-conv 'last layer' W, so gradients w.r.t. W exist."""
    torch.manual_seed(1)
    last_layer = torch.nn.Parameter(torch.randn(3, 4, 1, 1) * 0.3)
    return torch.rand(batch, 3, 16, 16) * 2 - 1, F.conv2d(torch.randn(batch, 4, 16, 16), last_layer), last_layer


def test_gan_helper_formulas():
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(
        0.5 * (torch.log1p(torch.exp(-real)).mean() + torch.log1p(torch.exp(fake)).mean()).item(), rel=1e-5)
    weights = torch.tensor([1.0, 0.0, 0.0])
    assert hinge_d_loss_with_exemplar_weights(real, fake, weights).item() == pytest.approx(
        hinge_d_loss(real[:1], fake[:1]).item(), rel=1e-5)
    assert adopt_weight(1.0, 4, threshold=5) == 0.0 and adopt_weight(1.0, 5, threshold=5) == 1.0


def test_codebook_perplexity_equals_code_count_for_uniform_use():
    perplexity, used = measure_perplexity(torch.arange(8).repeat(3), 16)
    assert perplexity.item() == pytest.approx(8.0, rel=1e-5) and used.item() == 8


def test_vq_loss_is_mean_pixel_loss_plus_codebook_term_before_disc_start():
    loss_fn = VQLPIPSWithDiscriminator(disc_start=100, codebook_weight=0.5, disc_num_layers=2,
                                       perceptual_weight=0.0, pixel_loss="l2", n_classes=4)
    inputs, rec, last_layer = decoder_output()
    codebook = torch.tensor([0.2, 0.4])
    loss, log = loss_fn(codebook, inputs, rec, 0, global_step=0, last_layer=last_layer,
                        predicted_indices=torch.tensor([0, 1, 2, 3]))
    expected = ((inputs - rec) ** 2).mean() + 0.5 * codebook.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert log["train/perplexity"].item() == pytest.approx(4.0, rel=1e-5)
    no_codebook, _ = loss_fn(None, inputs, rec, 0, global_step=0, last_layer=last_layer)
    assert no_codebook.item() == pytest.approx(((inputs - rec) ** 2).mean().item(), rel=1e-5)
