"""Sigma-space samplers: each deterministic one converges to the exact flow at its order, the
production configurations (default / Karras sigmas ending at 0) are accurate, also on a cosine
schedule, Heun agrees with diffusers' HeunDiscreteScheduler, the stochastic ones sample the
right distribution, and KDiffusionSampler keeps the DDIM call."""
import math

import pytest
import torch

from ldm.models.diffusion.k_diffusion import (
    SIGMA_SAMPLERS,
    KDiffusionSampler,
    get_ancestral_step,
    linear_multistep_coefficient,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_heun,
    sample_lms,
)
from ldm.models.diffusion.sigma_schedule import (
    DiscreteSigmaSchedule,
    ModelDenoiser,
    sigma_to_vp_space,
    vp_to_sigma_space,
)
from ldm.modules.diffusionmodules.util import make_beta_schedule
from tests.models.diffusion.gaussian_analytic import GaussianDataModel, fitted_order, format_table, relative_error

STEPS = (5, 10, 20, 40)
SHAPE = (4, 8, 8)


def log_snr_sigmas(schedule, n):
    """n steps uniform in log(sigma) from sigma_max to sigma_min (no final jump to 0)."""
    return torch.exp(torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min),
                                    n + 1, dtype=torch.float64))


def flow_error(model, sampler_fn, sigmas, x_T, **kwargs):
    """Relative error (and model evaluations) of ``sampler_fn`` on ``sigmas`` against the exact
    flow between sigmas[0] and sigmas[-1], compared in VP space."""
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    denoiser = ModelDenoiser(model, schedule)
    out = sampler_fn(denoiser, vp_to_sigma_space(x_T, sigmas[0]), sigmas, disable=True,
                     **kwargs)
    a_start, a_end = (1 / (1 + float(s) ** 2) for s in (sigmas[0], sigmas[-1]))
    exact = model.exact_flow(x_T, a_start, a_end)
    return relative_error(sigma_to_vp_space(out, sigmas[-1]), exact), denoiser.calls


ORDERS = {"euler": 1, "heun": 2, "dpmpp_2m": 2}


@pytest.mark.parametrize("name", list(ORDERS))
def test_deterministic_sampler_converges_at_its_order(name):
    model = GaussianDataModel(data_std=2.0, interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    x_T = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    results = [flow_error(model, SIGMA_SAMPLERS[name], log_snr_sigmas(schedule, n), x_T)
               for n in STEPS]
    print("\n" + format_table(f"{name} (log-sigma-uniform steps) vs exact flow, N(0, 2^2)",
                              STEPS, {name: results}))
    errors = [e for e, _ in results]
    per_step = 2 if name == "heun" else 1
    assert [n for _, n in results] == [per_step * n for n in STEPS]
    assert errors[1] > errors[2] > errors[3] and errors[0] > errors[3]
    # the 5-step point is outside the asymptotic range for the multistep method
    assert fitted_order(STEPS[1:], errors[1:]) > ORDERS[name] - 0.3


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m():
    model = GaussianDataModel(interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    sigmas = schedule.get_sigmas(12, "karras")
    x = torch.randn(2, *SHAPE, dtype=torch.float64) * sigmas[0]
    two_m = sample_dpmpp_2m(ModelDenoiser(model, schedule), x, sigmas, disable=True)
    sde = sample_dpmpp_2m_sde(ModelDenoiser(model, schedule), x, sigmas, disable=True, eta=0.)
    assert torch.allclose(two_m, sde, rtol=1e-12, atol=1e-12)


PRODUCTION = ["euler", "heun", "dpmpp_2m", "unipc"]


def test_production_configurations_reach_the_exact_answer():
    """As users run them: S steps on the default or Karras sigmas, ending with the jump to
    sigma = 0 (which alone leaves an error of about sigma_min^2 / (2 s^2) = 1e-4 here)."""
    model = GaussianDataModel(data_std=2.0, interpolation="log_sigma")
    x_T = torch.randn(1, *SHAPE, dtype=torch.float64)
    exact = model.exact_flow(x_T, model.alpha_bar(999), 1.0)
    rows = {}
    for name in PRODUCTION:
        for kind in ("default", "karras"):
            results = []
            for n in STEPS:
                model.calls = 0
                out, _ = KDiffusionSampler(model, name, kind).sample(n, 1, SHAPE, None, x_T=x_T,
                                                                     verbose=False)
                results.append((relative_error(out, exact), model.calls))
            rows[f"{name}_{kind}"] = results
    print("\n" + format_table("sigma samplers as run by users vs exact answer at sigma=0, "
                              "N(0, 2^2)", STEPS, rows))
    for name, results in rows.items():
        errors = [e for e, _ in results]
        assert errors[3] < errors[1], name
        assert errors[3] < (0.06 if name.startswith("euler") else 0.01), name


def cosine_schedule_model(**kwargs) -> GaussianDataModel:
    """The analytic model on the cosine schedule of the shipped model (sigma_max ~ 2e4: its
    last beta is capped at 0.999)."""
    model = GaussianDataModel(interpolation="log_sigma", **kwargs)
    betas = torch.as_tensor(make_beta_schedule("cosine", 1000), dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1. - betas, 0).to(torch.float32)
    model.betas = betas
    model.alphas_cumprod = alphas_cumprod.double()
    model.alphas_cumprod_prev = torch.cat([torch.ones(1), alphas_cumprod[:-1]]).double()
    return model


@pytest.mark.parametrize("kind", ["default", "karras"])
def test_heun_converges_on_a_cosine_schedule(kind):
    """Issue 18: Heun on the v-prediction cosine model. From sigma = 80 (the schedule's cap)
    both schedules converge to the exact flow at second order."""
    model = cosine_schedule_model(data_std=1.0, parameterization="v")
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    errors = []
    for n in (10, 20, 50):
        sampler = KDiffusionSampler(model, "heun", kind)
        a_start = 1 / (1 + float(sampler.get_sigmas(n)[0]) ** 2)
        out, _ = sampler.sample(n, 2, SHAPE, None, x_T=x_T, verbose=False)
        errors.append(relative_error(out, model.exact_flow(x_T, a_start, 1.0)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.05 and errors[2] < 0.006
    assert fitted_order((20, 50), errors[1:]) > 1.8


def test_heun_from_the_uncapped_top_of_a_cosine_schedule_is_lost():
    """Why the sigma schedules start at sigma = 80: a Heun step from the cosine schedule's last
    timestep (sigma ~ 2e4) to the next grid point amplifies the change of the denoiser over the
    step by about (sigma_i - sigma_i+1) / (2 sigma_i+1); even 50 steps stay far off."""
    model = cosine_schedule_model(data_std=1.0, parameterization="v")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    for n, lost in ((10, 10.), (50, 0.2)):
        t = torch.linspace(999, 0, n, dtype=torch.float64)
        uncapped = torch.cat([schedule.t_to_sigma(t), t.new_zeros(1)])
        assert float(uncapped[0]) > 2e4
        error, _ = flow_error(model, sample_heun, uncapped, x_T)
        capped, _ = flow_error(model, sample_heun, schedule.get_sigmas(n), x_T)
        assert error > lost > 10 * capped


def _diffusers_sample(scheduler, model, x_T, steps=10):
    """Sample with a diffusers k-style scheduler from DDIM's x_T (as ours takes it)."""
    scheduler.set_timesteps(steps)
    x = vp_to_sigma_space(x_T, scheduler.sigmas[0].double())
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(model.apply_model(x_in, t.double().expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("kind", ["default", "karras"])
def test_heun_matches_diffusers_heun_discrete_scheduler(kind):
    """The same v model, noise levels and start noise: diffusers' Heun (``linspace`` timesteps,
    or Karras sigmas) and ours agree to float32 rounding. SD's schedule (sigma_max 14.6 < 80)
    makes both define the same noise levels; 10 steps put the timesteps on integers."""
    import diffusers

    model = GaussianDataModel(data_std=1.0, parameterization="v", interpolation="log_sigma")
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    ours, _ = KDiffusionSampler(model, "heun", kind).sample(10, 2, SHAPE, None, x_T=x_T,
                                                           verbose=False)
    scheduler = diffusers.HeunDiscreteScheduler(
        num_train_timesteps=1000, trained_betas=model.betas.float().numpy(),
        prediction_type="v_prediction", timestep_spacing="linspace",
        use_karras_sigmas=kind == "karras")
    x = _diffusers_sample(scheduler, model, x_T)
    assert len(scheduler.timesteps) == 19  # 2 evaluations per step, 1 for the last
    assert torch.allclose(ours, x, rtol=0, atol=1e-5 * float(x.abs().max()))


def _sample_std_ratio(name, steps, data_std=2.0):
    model = GaussianDataModel(data_std=data_std, interpolation="log_sigma", dtype=torch.float32)
    out, _ = KDiffusionSampler(model, name, "karras").sample(
        steps, 16, (1, 32, 32), None, verbose=False, generator=torch.Generator().manual_seed(0))
    assert abs(float(out.mean())) < 0.1
    return float(out.std()) / data_std


def test_sde_dpmpp_2m_samples_the_data_distribution():
    assert abs(_sample_std_ratio("dpmpp_2m_sde", 30) - 1) < 0.05


def test_euler_ancestral_samples_the_data_distribution_with_first_order_bias():
    """Like DDPM / DDIM eta=1, Euler ancestral under-disperses at few steps (measured with
    262k samples: std ratio 0.88 at 30 steps, 0.96 at 100, 0.99 at 300)."""
    few, many = _sample_std_ratio("euler_a", 30), _sample_std_ratio("euler_a", 100)
    assert abs(few - 1) < 0.15 and abs(many - 1) < 0.05
    assert abs(many - 1) < abs(few - 1)


def test_ancestral_step_matches_the_ddpm_posterior_variance():
    sigma_down, sigma_up = get_ancestral_step(torch.tensor(2.), torch.tensor(1.))
    assert torch.isclose(sigma_up ** 2, torch.tensor(1. * (4. - 1.) / 4.))
    assert torch.isclose(sigma_down, torch.tensor(1. ** 2 / 2.))
    down, up = get_ancestral_step(torch.tensor(2.), torch.tensor(1.), eta=0.)
    assert float(down) == 1. and float(up) == 0.


def test_k_sampler_keeps_the_ddim_call_and_its_callbacks():
    model = GaussianDataModel(interpolation="log_sigma")
    steps, pred_x0s = [], []
    out, inter = KDiffusionSampler(model, "heun", "karras").sample(
        10, 2, SHAPE, None, verbose=False, log_every_t=5, callback=steps.append,
        img_callback=lambda x0, i: pred_x0s.append(x0))
    assert out.shape == (2, *SHAPE)
    assert steps == list(range(10)) and len(pred_x0s) == 10
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 4
    assert torch.equal(inter["x_inter"][-1], out)


def test_k_sampler_handles_v_models():
    x_T = torch.randn(1, *SHAPE, dtype=torch.float64)
    eps_out, _ = KDiffusionSampler(GaussianDataModel(interpolation="log_sigma"),
                                   "dpmpp_2m").sample(10, 1, SHAPE, None, x_T=x_T, verbose=False)
    v_out, _ = KDiffusionSampler(GaussianDataModel(parameterization="v",
                                                   interpolation="log_sigma"),
                                 "dpmpp_2m").sample(10, 1, SHAPE, None, x_T=x_T, verbose=False)
    assert torch.allclose(v_out, eps_out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("option, value", [("score_corrector", object()),
                                           ("temperature", 0.5), ("ucg_schedule", [1.] * 5)])
def test_k_sampler_refuses_ddim_only_options(option, value):
    sampler = KDiffusionSampler(GaussianDataModel(), "euler")
    with pytest.raises(ValueError, match="does not support"):
        sampler.sample(5, 1, SHAPE, None, verbose=False, **{option: value})


def test_k_sampler_refuses_unknown_algorithms_and_schedules():
    with pytest.raises(ValueError, match="unknown sigma-space sampler"):
        KDiffusionSampler(GaussianDataModel(), "rk45")
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        KDiffusionSampler(GaussianDataModel(), "euler", "cosine")


@pytest.mark.parametrize("algorithm, kind", [("euler", "default"), ("dpmpp_2m", "karras"),
                                             ("euler_a", "default")])
def test_k_sampler_inpainting_ends_exactly_at_x0_in_the_known_region(algorithm, kind):
    model = GaussianDataModel(interpolation="log_sigma")
    x0 = torch.randn(1, *SHAPE, dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :3] = 1.
    sampler = KDiffusionSampler(model, algorithm, kind)
    x_T = torch.randn(1, *SHAPE, dtype=torch.float64)
    out, _ = sampler.sample(8, 1, SHAPE, None, x_T=x_T, mask=mask, x0=x0, verbose=False,
                            generator=torch.Generator().manual_seed(0))
    free, _ = sampler.sample(8, 1, SHAPE, None, x_T=x_T, verbose=False,
                             generator=torch.Generator().manual_seed(0))
    known = mask.expand_as(x0).bool()
    assert torch.equal(out[known], x0[known])
    assert not torch.allclose(free[known], x0[known])
    # the analytic model acts per element, so the free region is untouched by the blend
    assert torch.allclose(out[~known], free[~known])
    with pytest.raises(ValueError, match="mask needs x0"):
        sampler.sample(8, 1, SHAPE, None, mask=mask, verbose=False)


def test_lms_coefficients_integrate_polynomials_exactly():
    """An order-k step integrates any slope polynomial of degree < k in sigma exactly; the
    first-order coefficient is the step length (Euler)."""
    sigmas = torch.tensor([9., 5., 2.5, 1., 0.3], dtype=torch.float64)
    assert linear_multistep_coefficient(1, sigmas, 0, 0) == pytest.approx(-4.)
    cubic = [0.5, -1., 0.25, 0.125]
    for i in (3, 2):
        order = min(i + 1, 4)
        value = sum(c * sigmas ** p for p, c in enumerate(cubic[:order]))
        step = sum(linear_multistep_coefficient(order, sigmas, i, j) * float(value[i - j])
                   for j in range(order))
        exact = sum(c * (float(sigmas[i + 1]) ** (p + 1) - float(sigmas[i]) ** (p + 1)) / (p + 1)
                    for p, c in enumerate(cubic[:order]))
        assert step == pytest.approx(exact, rel=1e-12)


def test_lms_converges_at_fourth_order():
    """Higher order than every other sigma sampler on log-sigma-uniform steps, against the exact
    flow of Gaussian data (the harness of the other sigma samplers). The fitted global order is
    ~3.5 rather than 4 over 20-160 steps: the start-up steps run at orders 1-3 (as in
    k-diffusion and diffusers), and the first step is the longest in sigma."""
    model = GaussianDataModel(data_std=2.0, interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    x_T = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    steps = (20, 40, 80, 160)
    results = [flow_error(model, sample_lms, log_snr_sigmas(schedule, n), x_T) for n in steps]
    print("\n" + format_table("lms (log-sigma-uniform steps) vs exact flow, N(0, 2^2)", steps,
                              {"lms": results}))
    errors = [e for e, _ in results]
    assert [n for _, n in results] == list(steps)
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert fitted_order(steps, errors) > 3.3


@pytest.mark.parametrize("kind", ["default", "karras"])
def test_lms_matches_diffusers_lms_discrete_scheduler(kind):
    """The same eps model, noise levels and start noise: diffusers' LMSDiscreteScheduler and our
    ``lms``/``lms_karras`` agree to float32 rounding (10 steps put the timesteps on integers,
    where both schedules define the same sigmas)."""
    import diffusers

    model = GaussianDataModel(data_std=1.0, parameterization="eps", interpolation="log_sigma")
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    ours, _ = KDiffusionSampler(model, "lms", kind).sample(10, 2, SHAPE, None, x_T=x_T,
                                                          verbose=False)
    scheduler = diffusers.LMSDiscreteScheduler(
        num_train_timesteps=1000, trained_betas=model.betas.float().numpy(),
        prediction_type="epsilon", timestep_spacing="linspace",
        use_karras_sigmas=kind == "karras")
    x = _diffusers_sample(scheduler, model, x_T)
    assert torch.allclose(scheduler.sigmas.double(),
                          KDiffusionSampler(model, "lms", kind).get_sigmas(10).double(),
                          rtol=1e-5, atol=0)
    assert torch.allclose(ours, x, rtol=0, atol=1e-5 * float(x.abs().max()))
