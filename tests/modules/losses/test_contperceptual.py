"""LPIPSWithDiscriminator: the original loss formulas, checked against independent computations on
small tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.losses import LPIPSWithDiscriminator
from ldm.modules.losses.contperceptual import DummyLoss
from ldm.modules.losses.vqperceptual import hinge_d_loss


def decoder_output(batch=2):
    """Reconstructions from a 1x1-conv 'last layer' W, so gradients w.r.t. W exist."""
    torch.manual_seed(1)
    h = torch.randn(batch, 4, 16, 16)
    last_layer = torch.nn.Parameter(torch.randn(3, 4, 1, 1) * 0.3)
    inputs = torch.rand(batch, 3, 16, 16) * 2 - 1
    return inputs, F.conv2d(h, last_layer), last_layer


def _kl_loss(**kwargs):
    params = dict(disc_start=10, kl_weight=1e-3, logvar_init=0.5, disc_num_layers=2, perceptual_weight=0.0)
    params.update(kwargs)
    return LPIPSWithDiscriminator(**params)


def _independent_adaptive_weight(nll, g, last_layer, disc_weight):
    gn = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    gg = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
    return min(max(gn.norm().item() / (gg.norm().item() + 1e-4), 0.0), 1e4) * disc_weight


def test_generator_loss_is_laplace_nll_plus_kl_before_disc_start():
    loss_fn = _kl_loss()
    inputs, rec, last_layer = decoder_output()
    posterior = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4))
    loss, log = loss_fn(inputs, rec, posterior, 0, global_step=9, last_layer=last_layer)
    nll = (torch.abs(inputs - rec) / math.exp(0.5) + 0.5).sum() / 2
    kl = posterior.kl().sum() / 2
    assert torch.allclose(loss, nll + 1e-3 * kl, rtol=1e-5)
    assert torch.allclose(log["train/nll_loss"], nll, rtol=1e-5)
    assert log["train/disc_factor"] == 0.0 and log["train/logvar"] == 0.5


def test_after_disc_start_the_gan_term_has_the_adaptive_weight():
    loss_fn = _kl_loss(disc_weight=0.5)
    inputs, rec, last_layer = decoder_output()
    posterior = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4))
    loss, log = loss_fn(inputs, rec, posterior, 0, global_step=10, last_layer=last_layer)
    nll = (torch.abs(inputs - rec) / math.exp(0.5) + 0.5).sum() / 2
    g_loss = -loss_fn.discriminator(rec).mean()
    d_weight = _independent_adaptive_weight(nll, g_loss, last_layer, 0.5)
    assert log["train/d_weight"].item() == pytest.approx(d_weight, rel=1e-4)
    expected = nll + 1e-3 * posterior.kl().sum() / 2 + d_weight * g_loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert log["train/disc_factor"] == 1.0


def test_per_pixel_weights_scale_the_optimised_nll_but_not_the_logged_one():
    loss_fn = _kl_loss()
    inputs, rec, last_layer = decoder_output()
    posterior = DiagonalGaussianDistribution(torch.zeros(2, 8, 4, 4))
    weights = torch.full_like(inputs, 3.0)
    loss, log = loss_fn(inputs, rec, posterior, 0, global_step=0, last_layer=last_layer, weights=weights)
    plain, _ = loss_fn(inputs, rec, posterior, 0, global_step=0, last_layer=last_layer)
    kl = 1e-3 * posterior.kl().sum() / 2
    assert (loss - kl).item() == pytest.approx(3 * (plain - kl).item(), rel=1e-5)
    assert log["train/nll_loss"].item() == pytest.approx((plain - kl).item(), rel=1e-5)


def test_discriminator_step_is_the_hinge_loss_after_disc_start_and_zero_before():
    loss_fn = _kl_loss()
    inputs, rec, _ = decoder_output()
    posterior = DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4))
    d_loss, log = loss_fn(inputs, rec, posterior, 1, global_step=10)
    real, fake = loss_fn.discriminator(inputs), loss_fn.discriminator(rec)
    expected = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    assert d_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(log) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}
    before, _ = loss_fn(inputs, rec, posterior, 1, global_step=9)
    assert before.item() == 0.0


def test_discriminator_step_does_not_backpropagate_into_the_autoencoder():
    loss_fn = _kl_loss(disc_start=0)
    inputs, rec, last_layer = decoder_output()
    d_loss, _ = loss_fn(inputs, rec, DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4)), 1, global_step=0)
    d_loss.backward()
    assert last_layer.grad is None
    assert loss_fn.discriminator.main[0].weight.grad is not None


def test_evaluation_without_gradients_uses_adaptive_weight_zero():
    loss_fn = _kl_loss(disc_start=0).eval()
    inputs, rec, last_layer = decoder_output()
    with torch.no_grad():
        loss, log = loss_fn(inputs, rec.detach(), DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4)), 0,
                            global_step=0, last_layer=last_layer, split="val")
    assert log["val/d_weight"].item() == 0.0 and torch.isfinite(loss)


def test_training_mode_without_a_graph_is_an_error_not_a_silent_zero():
    loss_fn = _kl_loss(disc_start=0)
    inputs, rec, last_layer = decoder_output()
    with pytest.raises(RuntimeError):
        loss_fn(inputs, rec.detach(), DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4)), 0,
                global_step=0, last_layer=last_layer)


def test_logvar_is_a_learned_scalar_and_the_discriminator_an_attribute():
    loss_fn = _kl_loss(logvar_init=0.25)
    assert isinstance(loss_fn.logvar, torch.nn.Parameter) and loss_fn.logvar.shape == ()
    assert loss_fn.logvar.item() == 0.25
    assert "discriminator.main.0.weight" in loss_fn.state_dict()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="disc_loss must be one of"):
        _kl_loss(disc_loss="wasserstein")
    inputs, rec, _ = decoder_output()
    with pytest.raises(ValueError, match="optimizer_idx must be 0"):
        _kl_loss()(inputs, rec, DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4)), 2, global_step=0)
    with pytest.raises(ValueError, match="disc_conditional=True: pass cond"):
        _kl_loss(disc_conditional=True)(inputs, rec, DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4)),
                                        1, global_step=0)


def test_conditional_discriminator_sees_images_and_condition_concatenated():
    loss_fn = _kl_loss(disc_conditional=True, disc_in_channels=4)
    inputs, rec, _ = decoder_output()
    cond = torch.randn(2, 1, 16, 16)
    d_loss, _ = loss_fn(inputs, rec, DiagonalGaussianDistribution(torch.randn(2, 8, 4, 4)), 1, 10, cond=cond)
    real = loss_fn.discriminator(torch.cat((inputs, cond), 1))
    fake = loss_fn.discriminator(torch.cat((rec, cond), 1))
    assert d_loss.item() == pytest.approx(hinge_d_loss(real, fake).item(), rel=1e-5)


def test_dummy_loss_is_importable_where_a_shipped_config_names_it():
    assert list(DummyLoss().parameters()) == []
