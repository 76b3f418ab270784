"""ldm/modules/distributions/distributions.py: the autoencoder posterior."""
import math

import torch

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution, normal_kl


def _posterior(mean, logvar):
    return DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))


def test_mode_is_mean_and_sample_has_its_statistics():
    mean = torch.full((4000, 2, 1, 1), 1.5)
    logvar = torch.full((4000, 2, 1, 1), math.log(4.0))
    post = _posterior(mean, logvar)
    assert torch.equal(post.mode(), mean)
    sample = post.sample(generator=torch.Generator().manual_seed(0))
    assert abs(sample.mean().item() - 1.5) < 0.1 and abs(sample.std().item() - 2.0) < 0.1


def test_logvar_is_clamped_to_the_original_range():
    post = _posterior(torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 100.0))
    assert post.logvar.item() == 20.0


def test_kl_to_standard_normal_matches_closed_form():
    mean = torch.randn(3, 4, 2, 2)
    logvar = torch.randn(3, 4, 2, 2) * 0.3
    kl = _posterior(mean, logvar).kl()
    expected = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=[1, 2, 3])
    assert torch.allclose(kl, expected)
    assert torch.allclose(_posterior(mean, logvar).kl(_posterior(torch.zeros_like(mean), torch.zeros_like(logvar))), expected)


def test_nll_matches_gaussian_log_density():
    mean, logvar = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3) * 0.2
    x = torch.randn(2, 1, 3, 3)
    dist = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    assert torch.allclose(_posterior(mean, logvar).nll(x), -dist.log_prob(x).sum(dim=[1, 2, 3]), atol=1e-5)


def test_deterministic_posterior_has_zero_variance_and_kl():
    post = DiagonalGaussianDistribution(torch.randn(2, 4, 3, 3), deterministic=True)
    assert torch.equal(post.sample(), post.mean)
    assert post.kl().item() == 0.0


def test_normal_kl_zero_for_identical_and_positive_otherwise():
    m, lv = torch.randn(5), torch.randn(5)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(5), atol=1e-6)
    assert torch.all(normal_kl(m, lv, m + 1.0, lv) > 0)
