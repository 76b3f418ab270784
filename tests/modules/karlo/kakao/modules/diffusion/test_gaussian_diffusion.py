"""GaussianDiffusion (ldm/modules/karlo/kakao/modules/diffusion/gaussian_diffusion.py): schedules
and reverse-step means and variances against hand-computed cases, and a whole guided-prior chain
against diffusers' UnCLIPScheduler (which reproduces Karlo's prior sampling)."""
import math

import numpy as np
import pytest
import torch

from ldm.modules.karlo.kakao.modules import create_gaussian_diffusion
from ldm.modules.karlo.kakao.modules.diffusion import gaussian_diffusion as gd

# betas 0.1, 0.2, 0.5 -> abar 0.9, 0.72, 0.36; abar_prev 1, 0.9, 0.72
BETAS = [0.1, 0.2, 0.5]


def diffusion(mean_type=gd.ModelMeanType.START_X, var_type=gd.ModelVarType.FIXED_SMALL):
    return gd.GaussianDiffusion(betas=np.array(BETAS), model_mean_type=mean_type, model_var_type=var_type,
                                loss_type=gd.LossType.MSE)


def constant(value):
    return lambda x, t: torch.full_like(x, value)


def test_squaredcos_cap_v2_betas_are_the_cosine_alpha_bar_ratios():
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - f((i + 1) / 4) / f(i / 4), 0.999) for i in range(4)]
    np.testing.assert_allclose(gd.get_named_beta_schedule("squaredcos_cap_v2", 4), expected, rtol=1e-12)
    assert expected[-1] == 0.999  # the cap


def test_linear_schedule_is_ho_et_al_scaled_to_the_step_count():
    betas = gd.get_named_beta_schedule("linear", 500)
    assert betas[0] == pytest.approx(0.0002) and betas[-1] == pytest.approx(0.04)
    assert np.allclose(np.diff(betas), np.diff(betas)[0])


def test_posterior_coefficients_by_hand():
    d = diffusion()
    torch.testing.assert_close(d.alphas_cumprod, torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))
    # beta_t (1 - abar_{t-1}) / (1 - abar_t): 0, 0.2 * 0.1 / 0.28, 0.5 * 0.28 / 0.64
    torch.testing.assert_close(d.posterior_variance, torch.tensor([0.0, 0.02 / 0.28, 0.21875], dtype=torch.float64))
    torch.testing.assert_close(d.posterior_log_variance_clipped,
                               torch.log(torch.tensor([0.02 / 0.28, 0.02 / 0.28, 0.21875], dtype=torch.float64)))
    assert d.posterior_mean_coef1[1].item() == pytest.approx(0.2 * math.sqrt(0.9) / 0.28, rel=1e-12)
    assert d.posterior_mean_coef2[1].item() == pytest.approx(0.1 * math.sqrt(0.8) / 0.28, rel=1e-12)


def test_x0_prediction_mean_and_small_variance_by_hand():
    x, t = torch.tensor([[1.0, -2.0]]), torch.tensor([1])
    out = diffusion().p_mean_variance(constant(0.5), x, t, clip_denoised=False)
    c1, c2 = 0.2 * math.sqrt(0.9) / 0.28, 0.1 * math.sqrt(0.8) / 0.28
    torch.testing.assert_close(out["mean"], torch.tensor([[c1 * 0.5 + c2 * 1.0, c1 * 0.5 - c2 * 2.0]]))
    torch.testing.assert_close(out["variance"], torch.full((1, 2), 0.02 / 0.28))
    torch.testing.assert_close(out["pred_xstart"], torch.full((1, 2), 0.5))


def test_denoised_fn_then_clip_act_on_the_x0_prediction():
    x, t = torch.tensor([[1.0]]), torch.tensor([2])
    out = diffusion().p_mean_variance(constant(30.0), x, t, clip_denoised=False, denoised_fn=lambda v: v.clamp(-10, 10))
    assert out["pred_xstart"].item() == 10.0
    out = diffusion().p_mean_variance(constant(30.0), x, t, clip_denoised=True)
    assert out["pred_xstart"].item() == 1.0


def test_eps_prediction_and_large_variance_by_hand():
    x, t = torch.tensor([[1.0]]), torch.tensor([2])
    out = diffusion(gd.ModelMeanType.EPSILON, gd.ModelVarType.FIXED_LARGE).p_mean_variance(
        constant(0.5), x, t, clip_denoised=False)
    # x0 = x / sqrt(abar) - sqrt(1 / abar - 1) eps with abar = 0.36
    assert out["pred_xstart"].item() == pytest.approx(1 / 0.6 - math.sqrt(1 / 0.36 - 1) * 0.5, rel=1e-6)
    assert out["variance"].item() == pytest.approx(0.5)  # beta_2
    out0 = diffusion(gd.ModelMeanType.EPSILON, gd.ModelVarType.FIXED_LARGE).p_mean_variance(
        constant(0.5), x, torch.tensor([0]), clip_denoised=False)
    assert out0["variance"].item() == pytest.approx(0.02 / 0.28)  # the posterior variance of t = 1 stands in


def test_p_sample_adds_scaled_noise_except_at_the_last_step():
    x = torch.tensor([[1.0, -2.0]])
    noise = lambda shape: torch.full(tuple(shape), 2.0)  # noqa: E731
    d = diffusion()
    mean1 = d.p_mean_variance(constant(0.5), x, torch.tensor([1]), clip_denoised=False)["mean"]
    step1 = d.p_sample(constant(0.5), x, torch.tensor([1]), clip_denoised=False, noise_fn=noise)
    torch.testing.assert_close(step1["sample"], mean1 + math.sqrt(0.02 / 0.28) * 2.0)
    step0 = d.p_sample(constant(0.5), x, torch.tensor([0]), clip_denoised=False, noise_fn=noise)
    torch.testing.assert_close(step0["sample"], torch.full((1, 2), 0.5))  # t = 0: the mean is x0 itself


def test_ddim_step_with_eta_zero_by_hand():
    x, t = torch.tensor([[1.0]]), torch.tensor([2])
    out = diffusion().ddim_sample(constant(0.5), x, t, clip_denoised=False)
    eps = (x.item() / 0.6 - 0.5) / math.sqrt(1 / 0.36 - 1)
    assert out["sample"].item() == pytest.approx(0.5 * math.sqrt(0.72) + math.sqrt(1 - 0.72) * eps, rel=1e-6)


def test_guided_prior_chain_equals_diffusers_unclip_scheduler(monkeypatch):
    """25 respaced ancestral steps of an x0-predicting model, guided as the prior does, with the
    same start and step noise: our chain and diffusers' UnCLIPScheduler ("fixed_small_log",
    prediction "sample", x0 clamped to [-10, 10]; it reproduces Karlo's prior sampling) agree. Both
    get the float64 schedule that Karlo computes (diffusers' own float32 cumulative product drifts
    by ~5e-3 at the noisy end of this chain)."""
    import diffusers.schedulers.scheduling_unclip as unclip

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 6, generator=generator) * 0.5
    x_T = torch.randn(3, 6, generator=generator)
    noises = [torch.randn(3, 6, generator=generator) for _ in range(25)]

    def x0_model(x, t):  # depends on x and t, and exceeds the clamp at times
        return torch.tanh(x @ weight) * 12.0 * (1 - t.float()[:, None] / 2000)

    def guided(x, t):  # cond: the model; uncond: half of it; scale 4
        cond, uncond = x0_model(x, t), 0.5 * x0_model(x, t)
        return uncond + 4.0 * (cond - uncond)

    ours_draws = iter(noises)
    ours = create_gaussian_diffusion(steps=1000, learn_sigma=False, sigma_small=True,
                                     noise_schedule="squaredcos_cap_v2", use_kl=False, predict_xstart=True,
                                     rescale_learned_sigmas=False, timestep_respacing="25").p_sample_loop(
        guided, (3, 6), noise=x_T, device=torch.device("cpu"), clip_denoised=False,
        denoised_fn=lambda v: v.clamp(-10, 10), noise_fn=lambda shape: next(ours_draws))

    their_draws = iter(noises)  # diffusers draws no noise at the last step; we draw one and zero it
    monkeypatch.setattr(unclip, "randn_tensor", lambda shape, **kwargs: next(their_draws))
    scheduler = unclip.UnCLIPScheduler(variance_type="fixed_small_log", clip_sample=True, clip_sample_range=10.0,
                                       prediction_type="sample", num_train_timesteps=1000)
    betas = torch.from_numpy(gd.get_named_beta_schedule("squaredcos_cap_v2", 1000))
    scheduler.betas, scheduler.alphas, scheduler.alphas_cumprod = betas, 1 - betas, torch.cumprod(1 - betas, 0)
    scheduler.set_timesteps(25)
    sample, steps = x_T, scheduler.timesteps.tolist()
    for i, t in enumerate(steps):
        prev = steps[i + 1] if i + 1 < len(steps) else None
        sample = scheduler.step(guided(sample, torch.full((3,), t)), t, sample, prev_timestep=prev).prev_sample
    torch.testing.assert_close(ours, sample.float(), rtol=1e-6, atol=1e-6)
    assert ours.abs().max() > 1.0  # a non-trivial result
