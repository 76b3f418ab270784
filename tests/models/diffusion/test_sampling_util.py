"""The shared sampler helpers: thresholding, the one classifier-free-guidance wrapper with its
loss guidance, and the per-image noise draws."""
from types import SimpleNamespace

import pytest
import torch

from ldm.models.diffusion.sampling_util import (
    LossGuidance,
    append_dims,
    concat_conditionings,
    discrete_alpha_cumprod,
    guided_model_output,
    norm_thresholding,
    randn,
    spatial_norm_thresholding,
)
from ldm.models.diffusion.sigma_schedule import DiscreteSigmaSchedule
from ldm.modules.diffusionmodules.util import noise_like


def test_append_dims_adds_trailing_singletons_and_rejects_fewer_dims():
    x = torch.arange(3.)
    assert append_dims(x, 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="target_dims"):
        append_dims(torch.zeros(2, 2, 2), 2)


def test_norm_thresholding_caps_per_sample_rms_and_keeps_small_samples():
    x0 = torch.stack([torch.full((4, 2, 2), 3.), torch.full((4, 2, 2), 0.5)])
    out = norm_thresholding(x0, 1.0)
    rms = out.pow(2).flatten(1).mean(1).sqrt()
    assert torch.allclose(rms, torch.tensor([1.0, 0.5]))
    assert torch.equal(out[1], x0[1])


def test_spatial_norm_thresholding_caps_rms_over_channels_per_pixel():
    x0 = torch.zeros(1, 4, 2, 2)
    x0[0, :, 0, 0] = 2.
    x0[0, :, 1, 1] = 0.25
    out = spatial_norm_thresholding(x0, 1.0)
    rms = out.pow(2).mean(1).sqrt()
    assert torch.allclose(rms[0, 0, 0], torch.tensor(1.0))
    assert torch.allclose(out[0, :, 1, 1], x0[0, :, 1, 1])


def test_concat_conditionings_puts_unconditional_first_for_every_kind():
    u, c = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(concat_conditionings(u, c), torch.cat([u, c]))
    assert torch.equal(concat_conditionings([u], [c])[0], torch.cat([u, c]))
    adm_u, adm_c = torch.zeros(2), torch.ones(2)
    out = concat_conditionings({"c_concat": [u], "c_crossattn": [u + 2], "c_adm": adm_u},
                               {"c_concat": [c], "c_crossattn": [c + 2], "c_adm": adm_c})
    assert torch.equal(out["c_concat"][0], torch.cat([u, c]))
    assert torch.equal(out["c_crossattn"][0], torch.cat([u + 2, c + 2]))
    assert torch.equal(out["c_adm"], torch.cat([adm_u, adm_c]))


def test_concat_conditionings_rejects_mismatched_kinds():
    with pytest.raises(ValueError, match="dict"):
        concat_conditionings(torch.zeros(1), {"c_crossattn": [torch.zeros(1)]})
    with pytest.raises(ValueError, match="list"):
        concat_conditionings(torch.zeros(1), [torch.zeros(1)])


class _RecordingModel:
    def __init__(self):
        self.batches = []

    def __call__(self, x, t, c):
        self.batches.append((x.shape[0], c))
        return x * 0 + c.reshape(-1, 1)


def test_guided_model_output_combines_one_doubled_batch():
    model = _RecordingModel()
    x, t = torch.zeros(2, 1), torch.zeros(2)
    u, c = torch.tensor([1., 2.]), torch.tensor([5., 10.])
    out = guided_model_output(model, x, t, c, u, 3.0)
    assert [b for b, _ in model.batches] == [4]
    assert torch.equal(model.batches[0][1], torch.cat([u, c]))
    assert torch.allclose(out[:, 0], u + 3.0 * (c - u))


@pytest.mark.parametrize("uc, scale", [(torch.tensor([1., 2.]), 1.0), (None, 7.5)])
def test_guided_model_output_runs_conditional_model_alone_without_guidance(uc, scale):
    model = _RecordingModel()
    c = torch.tensor([5., 10.])
    out = guided_model_output(model, torch.zeros(2, 1), torch.zeros(2), c, uc, scale)
    assert [b for b, _ in model.batches] == [2]
    assert torch.equal(out[:, 0], c)


def test_randn_with_one_generator_per_image_is_independent_of_batch_size():
    batch = randn((3, 2, 4), [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    single = randn((1, 2, 4), [torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1:2], single)
    assert not torch.equal(batch[0], batch[1])


def test_randn_without_generator_matches_torch_randn_stream():
    torch.manual_seed(7)
    ours = randn((2, 3))
    torch.manual_seed(7)
    assert torch.equal(ours, torch.randn(2, 3))


def test_randn_rejects_wrong_number_of_generators():
    with pytest.raises(ValueError, match="one generator per batch element"):
        randn((3, 2), [torch.Generator()] * 2)



def test_repeated_noise_is_one_draw_shared_by_the_batch_from_the_first_generator():
    shared = randn((3, 2, 4), [torch.Generator().manual_seed(s) for s in (1, 2, 3)], repeat=True)
    assert torch.equal(shared, randn((1, 2, 4), torch.Generator().manual_seed(1)).repeat(3, 1, 1))
    torch.manual_seed(7)
    from_global = noise_like((2, 3), "cpu", repeat=True)
    torch.manual_seed(7)
    assert torch.equal(from_global, torch.randn(1, 3).repeat(2, 1))  # the original's repeat_noise draws

def _as_parameterization(parameterization, x, eps, a):
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[parameterization]


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_loss_guidance_moves_eps_by_sqrt_one_minus_a_times_the_gradient(parameterization):
    """The same prediction given as eps, x0 or v: cond_fn sees the same denoised, with
    d denoised / dx = 1 / sqrt(a_t), and the guided output is eps - sqrt(1 - a_t) g in every
    parameterization (guided-diffusion's condition_score)."""
    torch.manual_seed(0)
    alphas_cumprod = torch.linspace(0.99, 0.01, 10, dtype=torch.float64)
    x, eps, g = (torch.randn(2, 3, 4, 4, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([2, 7])
    a = alphas_cumprod[t].reshape(2, 1, 1, 1)
    seen = {}

    def cond_fn(x_in, t_in, denoised):
        seen["denoised"] = denoised.detach()
        seen["slope"] = torch.autograd.grad(denoised.sum(), x_in)[0]
        return g

    model = SimpleNamespace(alphas_cumprod=alphas_cumprod, parameterization=parameterization)
    guided = LossGuidance.for_model(cond_fn, model)(x, t, _as_parameterization(parameterization, x, eps, a))
    assert torch.allclose(guided, _as_parameterization(parameterization, x, eps - (1 - a).sqrt() * g, a),
                          rtol=0, atol=1e-12)
    assert torch.allclose(seen["denoised"], (x - (1 - a).sqrt() * eps) / a.sqrt(), rtol=0, atol=1e-12)
    assert torch.allclose(seen["slope"], (1 / a.sqrt()).expand_as(x), rtol=0, atol=1e-12)


def test_loss_guidance_in_sigma_space_is_denoised_plus_sigma_squared_gradient():
    """With the gradient taken w.r.t. x = x_t / sqrt(a) (g = g_sigma / sqrt(a)), the denoised
    prediction moves by sigma^2 g_sigma, the colour-loss tutorial's update."""
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    x, eps, g_sigma = (torch.randn(1, 2, 3, 3, dtype=torch.float64) for _ in range(3))
    a = alphas_cumprod[1]
    model = SimpleNamespace(alphas_cumprod=alphas_cumprod, parameterization="x0")
    guidance = LossGuidance.for_model(lambda x_in, t, d: g_sigma / a.sqrt(), model)
    x0 = _as_parameterization("x0", x, eps, a)
    assert torch.allclose(guidance(x, torch.tensor([1]), x0), x0 + (1 - a) / a * g_sigma, atol=1e-12)


def test_fractional_timesteps_interpolate_log_sigma_as_the_sigma_samplers_do():
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    schedule = DiscreteSigmaSchedule(alphas_cumprod)
    t = torch.tensor([0., 0.25, 1.5, 2.])
    sigma = schedule.t_to_sigma(t)
    assert torch.allclose(discrete_alpha_cumprod(alphas_cumprod, t), 1 / (1 + sigma ** 2), atol=1e-12)
    assert torch.equal(discrete_alpha_cumprod(alphas_cumprod, torch.tensor([2])), alphas_cumprod[2:])


def test_loss_guidance_acts_on_the_classifier_free_guided_output():
    def apply_model(x, t, c):
        return x * c

    x = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    cond, uncond = torch.full((2, 1, 1, 1), 3., dtype=torch.float64), torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    seen = []
    model = SimpleNamespace(alphas_cumprod=torch.tensor([0.5], dtype=torch.float64), parameterization="eps")
    guidance = LossGuidance.for_model(lambda x_in, t, d: seen.append(d.detach()) or torch.ones_like(x_in), model)
    out = guided_model_output(apply_model, x, torch.tensor([0, 0]), cond, uncond, 2., guidance)
    assert torch.allclose(out, torch.full_like(x, 6. - 0.5 ** 0.5))  # u + 2 (c - u) = 6, then - sqrt(1 - a)
    assert torch.allclose(seen[0], (x - 0.5 ** 0.5 * 6.) / 0.5 ** 0.5)  # denoised of the guided eps


def test_ddim_score_corrector_works_for_v_models_as_for_eps_models():
    """The corrector's eps change moves a v model's output like an eps model's (the Gaussian
    model gives the same posterior in both parameterizations)."""
    from ldm.models.diffusion.ddim import DDIMSampler
    from tests.models.diffusion.gaussian_analytic import GaussianDataModel

    class Shift:
        def modify_score(self, model, e_t, x, t, c):
            return e_t + 0.1

    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {p: DDIMSampler(GaussianDataModel(parameterization=p)).sample(
        10, 2, (1, 4, 4), None, x_T=x_T, score_corrector=Shift(), verbose=False)[0] for p in ("eps", "v")}
    plain = DDIMSampler(GaussianDataModel()).sample(10, 2, (1, 4, 4), None, x_T=x_T, verbose=False)[0]
    assert torch.allclose(out["v"], out["eps"], rtol=0, atol=1e-5)  # DDIM keeps float32 alphas
    assert not torch.allclose(out["eps"], plain)
