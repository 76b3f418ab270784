"""The sampler registry, and what every sampler guarantees through the same ``sample(...)``
call: guidance batches [uncond, cond] for tensor, list and dict conditionings, scale 1 is the
conditional model, a batch of N equals N single runs with one generator per image, and a NaN
from the model stops the run with ``NonFiniteSampleError``."""
import re

import pytest
import torch

from ldm.models.diffusion import samplers
from ldm.models.diffusion.sampling_util import NonFiniteSampleError, randn
from tests.models.diffusion.gaussian_analytic import GaussianDataModel

SHAPE = (4, 4, 4)
NAMES = list(samplers.SAMPLERS)


def test_every_sampler_is_listed_described_and_displayed():
    assert {"ddim", "plms", "dpm", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras",
            "dpmpp_2m_sde", "dpmpp_2m_sde_karras", "unipc"} <= set(NAMES)
    assert set(NAMES) | set(samplers.ALIASES) == set(samplers.sampler_names())
    assert len(samplers.describe_samplers().splitlines()) == len(NAMES)
    assert samplers.display_name("dpmpp_2m_karras") == "DPM++ 2M Karras"
    assert samplers.display_name("k_euler_a") == "Euler a"


@pytest.mark.parametrize("name, plms, dpm, expected", [
    (None, False, False, "ddim"), (None, True, False, "plms"), (None, False, True, "dpm"),
    ("DPM++-2M-Karras", False, False, "dpmpp_2m_karras"), ("dpm_solver", False, True, "dpm"),
    ("k_euler_a", False, False, "euler_a")])
def test_sampler_names_resolve_from_flags_and_aliases(name, plms, dpm, expected):
    assert samplers.resolve_sampler_name(name, plms=plms, dpm=dpm) == expected


@pytest.mark.parametrize("name, plms, dpm, message", [
    ("k_dpm_fast", False, False, "unknown sampler 'k_dpm_fast'; choose one of ddim, plms, dpm"),
    ("euler", True, False, "--sampler euler conflicts with --plms"),
    (None, True, True, "--plms and --dpm both given")])
def test_bad_sampler_choices_are_refused_with_a_clear_message(name, plms, dpm, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        samplers.resolve_sampler_name(name, plms=plms, dpm=dpm)


def _model(name):
    interpolation = "log_alpha" if name == "dpm" else "log_sigma"
    return GaussianDataModel(data_std=2.0, interpolation=interpolation)


def _conditionings(kind, batch):
    """(cond, uncond, combine(cond, uncond, scale) -> pre-guided cond) of one kind."""
    values = torch.linspace(-1, 1, batch, dtype=torch.float64).reshape(batch, 1, 1, 1)
    c, u = 0.6 + values, -0.2 * values
    if kind == "tensor":
        return c, u, lambda s: u + s * (c - u)
    if kind == "list":
        return [c, c / 2], [u, u / 2], lambda s: [u + s * (c - u), (u + s * (c - u)) / 2]
    adm_c = torch.full((batch, 1, 1, 1), 0.1, dtype=torch.float64)
    adm_u = torch.zeros_like(adm_c)
    cond = {"c_concat": [c], "c_crossattn": [c / 3], "c_adm": adm_c}
    uncond = {"c_concat": [u], "c_crossattn": [u / 3], "c_adm": adm_u}
    return cond, uncond, lambda s: {"c_concat": [u + s * (c - u)],
                                    "c_crossattn": [(u + s * (c - u)) / 3],
                                    "c_adm": adm_u + s * (adm_c - adm_u)}


def _sample(name, model, batch, cond, generator_seeds, **kwargs):
    """Six steps in float64 from per-image generators (x_T is their first draw)."""
    generators = [torch.Generator().manual_seed(s) for s in generator_seeds]
    x_T = randn((batch, *SHAPE), generators, dtype=torch.float64)
    sampler = samplers.get_sampler(name, model)
    out, _ = sampler.sample(6, batch, SHAPE, cond, verbose=False, x_T=x_T,
                            eta=0.5 if name == "ddim" else 0., generator=generators, **kwargs)
    return out


@pytest.mark.parametrize("kind", ["tensor", "list", "dict"])
@pytest.mark.parametrize("name", NAMES)
def test_guidance_batches_uncond_first_for_every_sampler(name, kind):
    """u + s (c - u) of a model linear in its conditioning is that model conditioned on
    u + s (c - u); swapping the halves would give c + s (u - c) instead."""
    model = _model(name)
    cond, uncond, combine = _conditionings(kind, 2)
    guided = _sample(name, model, 2, cond, [1, 2], unconditional_guidance_scale=3.0,
                     unconditional_conditioning=uncond)
    reference = _sample(name, model, 2, combine(3.0), [1, 2])
    assert torch.allclose(guided, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_guidance_scale_one_is_the_conditional_model_for_every_sampler(name):
    model = _model(name)
    cond, uncond, _ = _conditionings("dict", 2)
    plain = _sample(name, model, 2, cond, [1, 2])
    calls = model.calls
    guided = _sample(name, model, 2, cond, [1, 2], unconditional_guidance_scale=1.0,
                     unconditional_conditioning=uncond)
    assert torch.equal(plain, guided)
    assert model.calls == 2 * calls  # no doubled batch either: same number of model calls


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_n_equals_n_single_runs_for_every_sampler(name):
    model = _model(name)
    cond, _, _ = _conditionings("tensor", 3)
    batch = _sample(name, model, 3, cond, [5, 6, 7])
    for i, seed in enumerate([5, 6, 7]):
        single = _sample(name, model, 1, cond[i:i + 1], [seed])
        assert torch.allclose(batch[i:i + 1], single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_seeds_reproduce_every_sampler(name):
    model = _model(name)
    first = _sample(name, model, 2, None, [8, 9])
    assert torch.equal(first, _sample(name, model, 2, None, [8, 9]))
    assert not torch.allclose(first, _sample(name, model, 2, None, [8, 10]))


def test_get_sampler_places_the_sampler_on_the_requested_device():
    model = GaussianDataModel()
    for name in NAMES:
        assert samplers.get_sampler(name, model).device == torch.device("cpu")
        assert samplers.get_sampler(name, model, device="meta").device == torch.device("meta")


class NaNFromCall:
    """Wraps a model's ``apply_model`` so that call number ``first_bad`` (counted from 1) and
    every later one return NaN, as an fp16 overflow would."""

    def __init__(self, model, first_bad: int):
        self.apply_model, self.first_bad, self.calls = model.apply_model, first_bad, 0
        model.apply_model = self

    def __call__(self, x, t, cond=None):
        self.calls += 1
        out = self.apply_model(x, t, cond)
        return out if self.calls < self.first_bad else torch.full_like(out, float("nan"))


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_from_the_model_stops_every_sampler_at_that_step(name):
    """NaN from the 4th model evaluation on: the run raises within a step of it, naming the
    step and the usual causes, instead of returning NaN latents (black images)."""
    model = _model(name)
    spy = NaNFromCall(model, first_bad=4)
    with pytest.raises(NonFiniteSampleError) as raised:
        _sample(name, model, 2, None, [1, 2])
    message = str(raised.value)
    assert "\n" not in message
    assert "--precision full" in message and "ATTN_PRECISION" in message
    assert "NaN weights in the checkpoint" in message
    step, total = map(int, re.search(r"NaN/inf values at step (\d+) of (\d+)", message).groups())
    assert 2 <= step <= 4  # heun and PLMS's first step take two evaluations
    assert total == (7 if name in ("ddim", "plms") else 6)  # the original grid's quirk for S = 6
    assert spy.calls <= 5  # stopped at once: no evaluation after the step that produced NaN
    assert isinstance(raised.value, ValueError)
