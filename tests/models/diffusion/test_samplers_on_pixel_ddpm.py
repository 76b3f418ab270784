"""Every registered sampler on a pixel-space DDPM (no first stage, no conditioning), for eps, x0 and
v models, through ``DDPM.apply_model``; DDIM's update is eq. 12 of Song et al. 2021 on the model's
output, and DDIM at eta 1 on every timestep is the model's own ancestral ``p_sample_loop``."""
import pytest
import torch

from ldm.models.diffusion import samplers
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.sampling_util import randn
from ldm.util import instantiate_from_config
from tests.tiny_configs import TINY_IMAGE_SIZE, tiny_ddpm_config

SHAPE = (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
PARAMETERIZATIONS = ["eps", "x0", "v"]


def _ddpm(parameterization="eps", **params):
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_ddpm_config(parameterization=parameterization, **params)).eval()
    with torch.no_grad():  # zero-initialised output layers would make every output 0
        for p in model.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models():
    return {name: _ddpm(name) for name in PARAMETERIZATIONS}


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_every_sampler_samples_a_pixel_ddpm(models, name, parameterization):
    model = models[parameterization]
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    with torch.no_grad():
        samples, _ = samplers.get_sampler(name, model).sample(5, 2, SHAPE, None, verbose=False,
                                                             generator=generators)
    assert samples.shape == (2, *SHAPE)
    assert torch.isfinite(samples).all()
    assert float(samples.std()) > 0.05
    assert not torch.allclose(samples[0], samples[1])


def test_apply_model_is_the_unet_and_refuses_a_conditioning(models):
    model = models["eps"]
    x, t = torch.randn(2, *SHAPE), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(model.apply_model(x, t), model.model.diffusion_model(x, t))
    with pytest.raises(ValueError, match="unconditional: apply_model takes cond=None"):
        model.apply_model(x, t, torch.zeros(2, 1, 32))


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_one_ddim_step_is_song_et_al_eq_12_on_the_model_output(models, parameterization):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z, with x0 and eps of
    the model's output at x_t (eps: Ho et al. eq. 4; v: Salimans & Ho 2022), written here."""
    model = models[parameterization]
    sampler = DDIMSampler(model)
    sampler.make_schedule(10, ddim_eta=0.8, verbose=False)
    x, index = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5)), 6
    step = int(sampler.ddim_timesteps[index])
    t = torch.full((2,), step, dtype=torch.long)
    with torch.no_grad():
        x_prev, _ = sampler.p_sample_ddim(x, None, t, index=index, generator=torch.Generator().manual_seed(9))
        out = model.model.diffusion_model(x, t)
    a_t = model.alphas_cumprod[step]
    a_prev = model.alphas_cumprod[int(sampler.ddim_timesteps[index - 1])]
    if parameterization == "eps":
        eps = out
    elif parameterization == "x0":
        eps = (x - a_t.sqrt() * out) / (1 - a_t).sqrt()
    else:
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = 0.8 * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    expected = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).sqrt() * eps + sigma * z
    assert torch.allclose(x_prev, expected, atol=1e-4, rtol=1e-4)


def _ancestral_reference(model, seed):
    """The model's own ancestral sampler (global random stream) from ``seed``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.p_sample_loop((2, *SHAPE))


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_ddim_at_eta_1_on_every_timestep_is_the_ancestral_sampler(parameterization, capsys):
    """Song et al. 2021, sec. 4.1: eta 1 on the full schedule is the DDPM posterior (no x0
    clipping: the model's ``clip_denoised`` off)."""
    model = _ddpm(parameterization, timesteps=20, clip_denoised=False)
    sampler = DDIMSampler(model)
    sampler.make_schedule(5, ddim_eta=1.0, verbose=False)
    torch.manual_seed(3)
    with torch.no_grad():
        ddim, _ = sampler.ddim_sampling(None, (2, *SHAPE), ddim_use_original_steps=True, verbose=False)
    reference = _ancestral_reference(model, 3)
    assert torch.allclose(ddim, reference, atol=1e-3)  # float32 schedules (see test_ancestral.py)
    assert float(reference.std()) > 0.1


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_the_ddpm_sampler_on_every_timestep_is_p_sample_loop_with_clipping(parameterization, capsys):
    model = _ddpm(parameterization, timesteps=20)
    assert model.clip_denoised
    torch.manual_seed(4)
    with torch.no_grad():
        ddpm, _ = samplers.get_sampler("ddpm", model).sample(20, 2, SHAPE, None, verbose=False)
    reference = _ancestral_reference(model, 4)
    assert torch.allclose(ddpm, reference, atol=1e-3)  # float32 schedules (see test_ancestral.py)
    unclipped = _ddpm(parameterization, timesteps=20, clip_denoised=False)
    torch.manual_seed(4)
    with torch.no_grad():
        assert not torch.allclose(samplers.get_sampler("ddpm", unclipped).sample(
            20, 2, SHAPE, None, verbose=False)[0], ddpm, atol=1e-2)


def test_per_image_generators_make_the_ddpm_sampler_independent_of_the_batch(models):
    model = models["v"]

    def run(seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.no_grad():
            return samplers.get_sampler("ddpm", model).sample(
                8, len(seeds), SHAPE, None, verbose=False, x_T=randn((len(seeds), *SHAPE), generators),
                generator=generators)[0]

    batch = run([7, 8])
    assert torch.allclose(batch[1:], run([8]), atol=1e-5)
