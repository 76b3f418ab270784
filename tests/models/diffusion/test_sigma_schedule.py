"""The sigma view of a discrete model: sigma <-> timestep maps, the Karras and default noise
levels (from at most sigma = 80), and the denoiser built from eps, v and x0 models."""
import pytest
import torch

from ldm.models.diffusion.sigma_schedule import (
    SIGMA_MAX_CAP,
    DiscreteSigmaSchedule,
    ModelDenoiser,
    get_sigmas_karras,
    sigma_to_vp_space,
    vp_to_sigma_space,
)
from ldm.modules.diffusionmodules.util import make_beta_schedule
from tests.models.diffusion.gaussian_analytic import GaussianDataModel, linear_alphas_cumprod


@pytest.fixture
def schedule():
    return DiscreteSigmaSchedule(linear_alphas_cumprod().double())


def test_sigmas_are_the_noise_to_signal_ratio_of_alphas_cumprod(schedule):
    ac = linear_alphas_cumprod().double()
    assert torch.allclose(schedule.sigmas ** 2, (1 - ac) / ac)
    assert schedule.sigma_min < 0.05 < 10 < schedule.sigma_max


def test_sigma_to_t_inverts_t_to_sigma_between_grid_points(schedule):
    t = torch.tensor([0., 0.25, 1., 17.5, 500.3, 998.9, 999.], dtype=torch.float64)
    assert torch.allclose(schedule.sigma_to_t(schedule.t_to_sigma(t)), t, atol=1e-9)
    grid = torch.tensor([0., 10., 999.], dtype=torch.float64)
    assert torch.allclose(schedule.t_to_sigma(grid), schedule.sigmas[[0, 10, 999]])
    # log-sigma is linear between grid points
    mid = schedule.t_to_sigma(torch.tensor([10.5], dtype=torch.float64))
    assert torch.allclose(mid, (schedule.sigmas[10] * schedule.sigmas[11]).sqrt())


def test_sigma_to_t_clamps_outside_the_schedule(schedule):
    t = schedule.sigma_to_t(torch.tensor([1e-4, 1e4], dtype=torch.float64))
    assert t.tolist() == [0., 999.]


def test_default_sigmas_are_uniform_in_timestep_and_end_at_zero(schedule):
    sigmas = schedule.get_sigmas(10)
    assert len(sigmas) == 11 and float(sigmas[-1]) == 0.
    assert torch.allclose(sigmas[[0, 9]], schedule.sigmas[[999, 0]])
    t = schedule.sigma_to_t(sigmas[:-1])
    assert torch.allclose(t, torch.linspace(999, 0, 10, dtype=torch.float64), atol=1e-8)


def test_karras_sigmas_follow_eq5_with_rho_7(schedule):
    sigmas = schedule.get_sigmas(8, "karras")
    assert len(sigmas) == 9 and float(sigmas[-1]) == 0.
    assert torch.allclose(sigmas[[0, 7]], schedule.sigmas[[999, 0]].to(sigmas.dtype))
    steps = sigmas[:-1] ** (1 / 7)
    assert torch.allclose(steps[1:] - steps[:-1], (steps[1] - steps[0]).expand(7), atol=1e-9)
    assert torch.allclose(get_sigmas_karras(8, schedule.sigma_min, schedule.sigma_max,
                                            dtype=torch.float64), sigmas)


def test_sd_schedules_start_sampling_at_their_own_sigma_max(schedule):
    assert schedule.sigma_max < SIGMA_MAX_CAP
    assert schedule.sampling_sigma_max == schedule.sigma_max


@pytest.mark.parametrize("n", [1, 10, 20])
def test_sampling_starts_at_sigma_80_when_the_schedule_goes_higher(n):
    """The cosine schedule's last timestep has sigma ~ 2e4 (Karras et al. 2022 start every
    model at sigma <= 80): the default levels are uniform in timestep from the timestep of
    sigma = 80, the Karras levels run from 80 down to sigma_min."""
    betas = torch.as_tensor(make_beta_schedule("cosine", 1000), dtype=torch.float64)
    cosine = DiscreteSigmaSchedule(torch.cumprod(1 - betas, 0))
    assert cosine.sigma_max > 2e4 and SIGMA_MAX_CAP == 80. == cosine.sampling_sigma_max
    default, karras = cosine.get_sigmas(n), cosine.get_sigmas(n, "karras")
    assert float(default[0]) == pytest.approx(80., rel=1e-9) and float(karras[0]) == 80.
    assert float(default[-1]) == float(karras[-1]) == 0.
    t_80 = float(cosine.sigma_to_t(torch.tensor(80., dtype=torch.float64)))
    assert 990 < t_80 < 991
    assert torch.allclose(cosine.sigma_to_t(default[:-1]),
                          torch.linspace(t_80, 0, n, dtype=torch.float64), atol=1e-8)
    if n > 1:
        assert float(default[-2]) == pytest.approx(cosine.sigma_min, rel=1e-12)
        assert float(karras[-2]) == pytest.approx(cosine.sigma_min, rel=1e-12)


def test_bad_schedule_requests_are_refused(schedule):
    with pytest.raises(ValueError, match="expected 'default' or 'karras'"):
        schedule.get_sigmas(10, "exponential")
    with pytest.raises(ValueError, match="at least 1"):
        schedule.get_sigmas(0)


def test_vp_and_sigma_space_conversions_are_inverse():
    x, sigma = torch.randn(2, 3), torch.tensor(3.)
    assert torch.allclose(sigma_to_vp_space(vp_to_sigma_space(x, sigma), sigma), x)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_denoiser_returns_the_posterior_mean_for_every_parameterization(parameterization):
    model = GaussianDataModel(data_std=2.0, parameterization=parameterization,
                              interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    denoiser = ModelDenoiser(model, schedule)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    for sigma in (0.03, 0.7, 14.0):
        denoised = denoiser(x, torch.tensor(sigma, dtype=torch.float64))
        assert torch.allclose(denoised, 4.0 * x / (4.0 + sigma ** 2), rtol=1e-9)
    assert denoiser.calls == 3


def test_denoiser_feeds_the_interpolated_timestep_and_the_vp_input():
    model = GaussianDataModel(interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    seen = []
    model.apply_model = lambda x, t, c: seen.append((x, t)) or torch.zeros_like(x)
    sigma = schedule.t_to_sigma(torch.tensor([123.25], dtype=torch.float64))[0]
    ModelDenoiser(model, schedule)(torch.ones(2, 1, 2, 2, dtype=torch.float64), sigma)
    x_in, t_in = seen[0]
    assert torch.allclose(t_in, torch.tensor([123.25, 123.25], dtype=torch.float64))
    assert torch.allclose(x_in, torch.ones_like(x_in) / (1 + sigma ** 2).sqrt())


def test_denoiser_thresholds_its_prediction_when_asked():
    model = GaussianDataModel(data_std=4.0, interpolation="log_sigma")
    denoiser = ModelDenoiser(model, DiscreteSigmaSchedule(model.alphas_cumprod),
                             dynamic_threshold=1.0)
    out = denoiser(torch.randn(2, 4, 4, 4, dtype=torch.float64) * 4,
                   torch.tensor(0.1, dtype=torch.float64))
    assert float(out.pow(2).flatten(1).mean(1).sqrt().max()) <= 1.0 + 1e-9
