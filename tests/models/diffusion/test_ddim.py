"""DDIMSampler: the original's grid and formulas (checked against diffusers' DDIMScheduler), the
analytic convergence check, determinism and reproducibility, guidance, inpainting blend,
img2img helpers and DDIM inversion."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.sampling_util import NonFiniteSampleError
from tests.models.diffusion.gaussian_analytic import (
    GaussianDataModel,
    fitted_order,
    format_table,
    relative_error,
    sample_with_diffusers_scheduler,
)

STEPS = (5, 10, 20, 40)
SHAPE = (4, 8, 8)


def ddim_error(model, steps, x_T, **kwargs):
    """Relative error of a DDIM run against the exact flow over the same window (the grid's
    last timestep down to alphas_cumprod[0])."""
    sampler = DDIMSampler(model)
    model.calls = 0
    out, _ = sampler.sample(steps, x_T.shape[0], x_T.shape[1:], None, x_T=x_T, verbose=False,
                            **kwargs)
    start = model.alpha_bar(int(sampler.ddim_timesteps[-1]))
    return relative_error(out, model.exact_flow(x_T, start, model.alpha_bar(0))), model.calls


def test_ddim_converges_to_exact_flow_at_first_order():
    model = GaussianDataModel(data_std=2.0)
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    results = [ddim_error(model, n, x_T) for n in STEPS]
    print("\n" + format_table("DDIM vs exact flow, N(0, 2^2) data", STEPS, {"ddim": results}))
    errors = [e for e, _ in results]
    assert errors == sorted(errors, reverse=True)
    assert [n for _, n in results] == list(STEPS)
    assert 0.8 < fitted_order(STEPS, errors) < 1.2
    assert errors[-1] < 0.05


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_diffusers_ddim_scheduler(steps):
    import diffusers
    model = GaussianDataModel(data_std=2.0, dtype=torch.float32)
    x_T = torch.randn(2, *SHAPE)
    ours, _ = DDIMSampler(model).sample(steps, 2, SHAPE, None, x_T=x_T, verbose=False)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, trained_betas=model.betas.numpy(), clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    theirs = sample_with_diffusers_scheduler(scheduler, model, x_T, steps)
    assert torch.allclose(ours, theirs, atol=2e-5, rtol=1e-5)


def test_ddim_grid_has_the_original_quirks():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, verbose=False)
    assert sampler.ddim_timesteps.tolist() == list(range(1, 1000, 20))
    assert float(sampler.ddim_alphas_prev[0]) == float(model.alphas_cumprod[0])
    sampler.make_schedule(30, verbose=False)
    assert len(sampler.ddim_timesteps) == 31
    model.seen_timesteps.clear()
    sampler.sample(30, 1, SHAPE, None, verbose=False)
    seen = [int(t[0]) for t in model.seen_timesteps]
    assert seen == sampler.ddim_timesteps[::-1].tolist()
    assert all(t.dtype == torch.long for t in model.seen_timesteps)


def test_ddim_eta0_is_deterministic():
    model = GaussianDataModel()
    x_T = torch.randn(1, *SHAPE, dtype=torch.float64)
    torch.manual_seed(1)
    first, _ = DDIMSampler(model).sample(10, 1, SHAPE, None, x_T=x_T, verbose=False)
    torch.manual_seed(2)
    second, _ = DDIMSampler(model).sample(10, 1, SHAPE, None, x_T=x_T, verbose=False)
    assert torch.equal(first, second)


def test_ddim_eta_positive_is_reproducible_with_a_generator():
    model = GaussianDataModel()

    def run(seed):
        out, _ = DDIMSampler(model).sample(10, 2, SHAPE, None, eta=1.0, verbose=False,
                                           generator=torch.Generator().manual_seed(seed))
        return out

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_ddim_batch_of_n_equals_n_single_runs_with_one_generator_each():
    model = GaussianDataModel()
    seeds = [11, 12, 13]
    batch, _ = DDIMSampler(model).sample(
        10, 3, SHAPE, torch.zeros(3, 1, 1, 1), eta=0.7, verbose=False,
        generator=[torch.Generator().manual_seed(s) for s in seeds])
    for i, seed in enumerate(seeds):
        single, _ = DDIMSampler(model).sample(
            10, 1, SHAPE, torch.zeros(1, 1, 1, 1), eta=0.7, verbose=False,
            generator=[torch.Generator().manual_seed(seed)])
        assert torch.allclose(batch[i:i + 1], single, rtol=0, atol=1e-12)


def test_ddim_v_model_gives_the_eps_model_result():
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    eps_out, _ = DDIMSampler(GaussianDataModel()).sample(10, 2, SHAPE, None, x_T=x_T,
                                                         verbose=False)
    v_model = GaussianDataModel(parameterization="v")
    v_out, _ = DDIMSampler(v_model).sample(10, 2, SHAPE, None, x_T=x_T, verbose=False)
    assert torch.allclose(v_out, eps_out, rtol=1e-6, atol=1e-7)


def test_ddim_guidance_scale_one_equals_the_conditional_model():
    model = GaussianDataModel()
    x_T = torch.randn(2, *SHAPE, dtype=torch.float64)
    c, uc = torch.full((2, 1, 1, 1), 0.3), torch.zeros(2, 1, 1, 1)
    plain, _ = DDIMSampler(model).sample(10, 2, SHAPE, c, x_T=x_T, verbose=False)
    model.calls = 0
    guided, _ = DDIMSampler(model).sample(10, 2, SHAPE, c, x_T=x_T, verbose=False,
                                          unconditional_guidance_scale=1.0,
                                          unconditional_conditioning=uc)
    assert torch.equal(plain, guided)
    assert model.calls == 10


def test_ddim_ucg_schedule_sets_the_guidance_scale_per_step():
    model = GaussianDataModel()
    x_T = torch.randn(1, *SHAPE, dtype=torch.float64)
    c, uc = torch.full((1, 1, 1, 1), 0.3), torch.zeros(1, 1, 1, 1)
    constant, _ = DDIMSampler(model).sample(5, 1, SHAPE, c, x_T=x_T, verbose=False,
                                            unconditional_guidance_scale=4.0,
                                            unconditional_conditioning=uc)
    scheduled, _ = DDIMSampler(model).sample(5, 1, SHAPE, c, x_T=x_T, verbose=False,
                                             unconditional_conditioning=uc,
                                             ucg_schedule=[4.0] * 5)
    assert torch.equal(constant, scheduled)
    with pytest.raises(ValueError, match="ucg_schedule has 2 scales for 5 steps"):
        DDIMSampler(model).sample(5, 1, SHAPE, c, x_T=x_T, verbose=False,
                                  unconditional_conditioning=uc, ucg_schedule=[1., 2.])


def test_ddim_mask_blending_keeps_the_noised_then_denoised_original():
    model = GaussianDataModel()
    x0 = torch.randn(1, *SHAPE, dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :4] = 1.
    noised = []
    q_sample = model.q_sample

    def recording_q_sample(x_start, t, noise=None):
        noised.append(q_sample(x_start, t, noise))
        return noised[-1]

    model.q_sample = recording_q_sample
    inputs = []
    apply_model = model.apply_model
    model.apply_model = lambda x, t, c: inputs.append(x.clone()) or apply_model(x, t, c)
    sampler = DDIMSampler(model)
    out, _ = sampler.sample(10, 1, SHAPE, None, mask=mask, x0=x0, verbose=False,
                            generator=torch.Generator().manual_seed(0))
    known = mask.expand_as(x0).bool()
    assert len(noised) == len(inputs) == 10
    for x_in, x_noised in zip(inputs, noised):
        assert torch.equal(x_in[known], x_noised[known])
    # the known region of the result is one DDIM step from x0 noised to the last timestep
    a_t, a_prev = model.alpha_bar(1), model.alpha_bar(0)
    x = noised[-1]
    eps = model.apply_model(x, torch.ones(1, dtype=torch.long), None)
    expected = a_prev ** 0.5 * (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5 + (1 - a_prev) ** 0.5 * eps
    assert torch.allclose(out[known], expected[known], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(out[~known], expected[~known], atol=1e-3)


def test_ddim_mask_without_x0_is_refused():
    with pytest.raises(ValueError, match="mask needs x0"):
        DDIMSampler(GaussianDataModel()).sample(5, 1, SHAPE, None, mask=torch.ones(1, 1, 8, 8),
                                                verbose=False)


def test_ddim_callbacks_and_intermediates_follow_the_original():
    model = GaussianDataModel()
    steps_seen, pred_x0s = [], []
    out, inter = DDIMSampler(model).sample(
        20, 1, SHAPE, None, verbose=False, log_every_t=5, callback=steps_seen.append,
        img_callback=lambda pred_x0, i: pred_x0s.append(pred_x0))
    assert steps_seen == list(range(20))
    assert len(pred_x0s) == 20
    # x_T, then index 19 (first step), 15, 10, 5, 0
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 6
    assert torch.equal(inter["x_inter"][-1], out)


def test_ddim_dynamic_threshold_caps_the_predicted_x0():
    model = GaussianDataModel(data_std=2.0)
    rms = []
    DDIMSampler(model).sample(5, 2, SHAPE, None, verbose=False, dynamic_threshold=0.5,
                              img_callback=lambda x0, i: rms.append(
                                  x0.pow(2).flatten(1).mean(1).sqrt()))
    assert all(float(r.max()) <= 0.5 + 1e-6 for r in rms)


def test_ddim_stochastic_encode_indexes_the_ddim_grid():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, verbose=False)
    x0, noise = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    t_enc = int(0.75 * 50)
    out = sampler.stochastic_encode(x0, torch.tensor([t_enc] * 2), noise=noise)
    a = float(sampler.ddim_alphas[t_enc])
    assert a == float(model.alphas_cumprod[sampler.ddim_timesteps[t_enc]])
    assert torch.allclose(out, a ** 0.5 * x0 + (1 - a) ** 0.5 * noise, atol=1e-6)


def test_ddim_decode_runs_the_first_t_start_steps_backwards():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(50, verbose=False)
    model.seen_timesteps.clear()
    sampler.decode(torch.randn(1, *SHAPE), None, 10, verbose=False)
    assert [int(t[0]) for t in model.seen_timesteps] == sampler.ddim_timesteps[:10][::-1].tolist()


def test_ddim_decode_stops_on_a_nan_from_the_model():
    """img2img's loop has the same NaN check as sampling: the step is named and the run stops
    there."""
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(20, verbose=False)
    apply_model, calls = model.apply_model, []

    def nan_from_the_third_call(x, t, c=None):
        calls.append(t)
        return apply_model(x, t, c) if len(calls) < 3 else torch.full_like(x, float("nan"))

    model.apply_model = nan_from_the_third_call
    with pytest.raises(NonFiniteSampleError, match=r"DDIM sampling produced NaN/inf values at "
                                                   r"step 3 of 10; .*--precision full"):
        sampler.decode(torch.randn(1, *SHAPE), None, 10, verbose=False)
    assert len(calls) == 3


def test_ddim_decode_with_eta_is_reproducible_per_image_with_generators():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(20, ddim_eta=0.8, verbose=False)
    x = torch.randn(2, *SHAPE)

    def gens():
        return [torch.Generator().manual_seed(s) for s in (5, 6)]

    pair = sampler.decode(x, None, 10, verbose=False, generator=gens())
    single = sampler.decode(x[1:], None, 10, verbose=False, generator=[torch.Generator().manual_seed(6)])
    assert torch.allclose(pair[1:], single, atol=1e-6)
    assert torch.equal(pair, sampler.decode(x, None, 10, verbose=False, generator=gens()))
    assert not torch.allclose(pair, sampler.decode(x, None, 10, verbose=False,
                                                   generator=[torch.Generator().manual_seed(9)] * 2))


@pytest.mark.parametrize("data_std", [0.5, 2.0])
def test_ddim_encode_then_decode_reconstructs_the_latent(data_std):
    model = GaussianDataModel(data_std=data_std)
    x0 = torch.randn(2, *SHAPE, dtype=torch.float64) * data_std
    errors = {}
    for steps in (50, 200):
        sampler = DDIMSampler(model)
        sampler.make_schedule(steps, verbose=False)
        encoded, info = sampler.encode(x0, None, steps, verbose=False)
        assert torch.equal(info["x_encoded"], encoded)
        errors[steps] = relative_error(sampler.decode(encoded, None, steps, verbose=False), x0)
    print(f"\nDDIM inversion, N(0, {data_std}^2): relative error {errors}")
    assert errors[50] < 0.05
    assert errors[200] < errors[50] / 3


def test_ddim_encode_feeds_the_grid_timesteps_to_the_model():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(10, verbose=False)
    model.seen_timesteps.clear()
    sampler.encode(torch.randn(1, *SHAPE), None, 4, verbose=False)
    assert [int(t[0]) for t in model.seen_timesteps] == [1, 101, 201, 301]


def test_ddim_sampler_takes_its_device_from_the_model_unless_given():
    model = GaussianDataModel()
    assert DDIMSampler(model).device == torch.device("cpu")
    sampler = DDIMSampler(model, device="meta")
    assert sampler.device == torch.device("meta")
    sampler.make_schedule(5, verbose=False)
    assert sampler.ddim_alphas.device == torch.device("meta")


def test_ddim_schedule_values_are_float32_like_the_original():
    sampler = DDIMSampler(GaussianDataModel())
    sampler.make_schedule(10, ddim_eta=0.5, verbose=False)
    a, a_prev = sampler.ddim_alphas.double(), sampler.ddim_alphas_prev.double()
    expected = 0.5 * torch.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    assert sampler.ddim_sigmas.dtype == torch.float32
    assert torch.allclose(sampler.ddim_sigmas.double(), expected, rtol=1e-6)
    assert np.allclose(sampler.ddim_sqrt_one_minus_alphas.numpy(), np.sqrt(1 - a.numpy()))
