"""Samplers on a tiny real LatentDiffusion (random, non-zero UNet weights): a batch of N equals
N single runs, guidance scale 1 is the conditional model, guided steps combine separate
unconditional and conditional passes, dict conditionings of hybrid models, v-prediction."""
import pytest
import torch

from ldm.models.diffusion import samplers
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.sampling_util import randn
from ldm.util import instantiate_from_config
from tests.tiny_configs import (
    TINY_CONTEXT_DIM,
    TINY_CONTEXT_TOKENS,
    TINY_LATENT_CHANNELS,
    TINY_LATENT_SIZE,
    tiny_inpainting_config,
    tiny_latent_diffusion_config,
)

SHAPE = (TINY_LATENT_CHANNELS, TINY_LATENT_SIZE, TINY_LATENT_SIZE)


def _build(config):
    torch.manual_seed(0)
    model = instantiate_from_config(config).eval()
    with torch.no_grad():  # zero-initialised output layers would make every output 0
        for p in model.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tiny_model():
    return _build(tiny_latent_diffusion_config())


def _context(batch, seed):
    return torch.randn(batch, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM,
                       generator=torch.Generator().manual_seed(seed))


def _run(name, model, cond, uncond, seeds, scale=5.0, steps=6):
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x_T = randn((len(seeds), *SHAPE), generators)
    out, _ = samplers.get_sampler(name, model).sample(
        steps, len(seeds), SHAPE, cond, verbose=False, x_T=x_T, generator=generators,
        eta=0.5 if name == "ddim" else 0., unconditional_guidance_scale=scale,
        unconditional_conditioning=uncond)
    return out


@pytest.mark.parametrize("name", ["ddim", "plms", "dpm", "dpmpp_2m_sde_karras", "unipc"])
def test_batch_of_n_equals_n_single_runs_with_a_real_unet(tiny_model, name):
    cond, uncond = _context(3, 1), torch.zeros(3, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM)
    with torch.no_grad():
        batch = _run(name, tiny_model, cond, uncond, [3, 4, 5])
        for i, seed in enumerate([3, 4, 5]):
            single = _run(name, tiny_model, cond[i:i + 1], uncond[i:i + 1], [seed])
            assert torch.allclose(batch[i:i + 1], single, atol=1e-4, rtol=1e-4)
    assert float(batch.std()) > 0.1


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler", "heun_karras"])
def test_guidance_scale_one_equals_the_conditional_model_with_a_real_unet(tiny_model, name):
    cond, uncond = _context(2, 2), _context(2, 3)
    with torch.no_grad():
        plain = _run(name, tiny_model, cond, None, [6, 7], scale=1.0)
        guided = _run(name, tiny_model, cond, uncond, [6, 7], scale=1.0)
        assert torch.equal(plain, guided)
        assert not torch.allclose(plain, _run(name, tiny_model, cond, uncond, [6, 7]))


def test_guided_ddim_step_combines_the_unconditional_and_conditional_passes(tiny_model):
    sampler = DDIMSampler(tiny_model)
    sampler.make_schedule(10, verbose=False)
    x, t = torch.randn(2, *SHAPE), torch.full((2,), 901, dtype=torch.long)
    cond, uncond = _context(2, 4), _context(2, 5)
    with torch.no_grad():
        x_prev, _ = sampler.p_sample_ddim(x, cond, t, index=9, unconditional_guidance_scale=7.5,
                                          unconditional_conditioning=uncond)
        e_u, e_c = tiny_model.apply_model(x, t, uncond), tiny_model.apply_model(x, t, cond)
    e_t = e_u + 7.5 * (e_c - e_u)
    a_t, a_prev = sampler.ddim_alphas[9], sampler.ddim_alphas_prev[9]
    pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
    expected = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_t
    assert torch.allclose(x_prev, expected, atol=1e-5, rtol=1e-5)


def test_samplers_guide_dict_conditionings_of_hybrid_models():
    model = _build(tiny_inpainting_config())
    c_concat = torch.randn(2, 5, TINY_LATENT_SIZE, TINY_LATENT_SIZE)
    cond = {"c_concat": [c_concat], "c_crossattn": [_context(2, 6)]}
    uncond = {"c_concat": [c_concat], "c_crossattn": [torch.zeros_like(_context(2, 6))]}
    with torch.no_grad():
        for name in ("ddim", "dpm", "dpmpp_2m_karras"):
            guided = _run(name, model, cond, uncond, [1, 2])
            assert torch.isfinite(guided).all()
            assert torch.equal(_run(name, model, cond, uncond, [1, 2], scale=1.0),
                               _run(name, model, cond, None, [1, 2], scale=1.0))


def test_ddim_predicts_x0_of_a_v_model_with_the_model_conversion():
    model = _build(tiny_latent_diffusion_config(parameterization="v"))
    sampler = DDIMSampler(model)
    sampler.make_schedule(10, verbose=False)
    x, t, cond = torch.randn(1, *SHAPE), torch.full((1,), 901, dtype=torch.long), _context(1, 7)
    with torch.no_grad():
        _, pred_x0 = sampler.p_sample_ddim(x, cond, t, index=9)
        v = model.apply_model(x, t, cond)
    assert torch.allclose(pred_x0, model.predict_start_from_z_and_v(x, t, v), atol=1e-6)
    with torch.no_grad():
        for name in ("ddim", "dpm", "euler"):
            assert torch.isfinite(_run(name, model, cond, None, [1], scale=1.0)).all()


@pytest.mark.parametrize("name", ["ddim", "plms", "dpm", "euler"])
def test_a_model_cast_to_bfloat16_samples_like_the_float32_model(name):
    """Weights in bfloat16, the schedule kept in float32: finite and close to the float32 run (a
    schedule rounded to bfloat16 made DDIM's coefficients NaN)."""
    model = _build(tiny_latent_diffusion_config())
    cond, uncond = _context(1, 1), torch.zeros(1, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM)
    with torch.no_grad():
        full = _run(name, model, cond, uncond, [7], steps=5)
        half = _run(name, model.to(torch.bfloat16), cond.bfloat16(), uncond.bfloat16(), [7], steps=5)
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()
