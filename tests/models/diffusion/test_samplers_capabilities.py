"""The sampler contract: every registered sampler declares what it honours
(``sampler_capabilities``, known without a model), ``sample()`` refuses every non-neutral option
it cannot honour with a one-line ``UnsupportedSamplerOption`` before touching the model, and
every option it declares has the effect it promises."""
import pytest
import torch

from ldm.models.diffusion import samplers
from ldm.models.diffusion.samplers import UnsupportedSamplerOption, check_sampler_options, sampler_capabilities
from ldm.models.diffusion.sampling_util import OPTION_DEFAULTS, SamplerCapabilities
from tests.models.diffusion.gaussian_analytic import GaussianDataModel

SHAPE = (4, 4, 4)
STEPS = 5  # DDIM's grid has exactly 5 timesteps for 5 steps (1000 / 5 divides evenly)
NAMES = list(samplers.SAMPLERS)


class ShiftingCorrector:
    """A score corrector that shifts the noise prediction and counts its calls."""

    def __init__(self):
        self.calls = 0

    def modify_score(self, model, e_t, x, t, c, shift=0.1):
        self.calls += 1
        return e_t + shift


class HalvingQuantizer:
    """A first stage whose ``quantize`` halves x0 and counts its calls."""

    def __init__(self):
        self.calls = 0

    def quantize(self, x):
        self.calls += 1
        return x / 2, None, None


# a non-neutral value of every option, and what it needs to act (DDIM's noise options act
# through eta, x0 through mask, corrector_kwargs through score_corrector)
NON_NEUTRAL = {
    "eta": (0.7, {}),
    "mask": (torch.ones(1, 1, 4, 4), {"x0": torch.zeros(1, *SHAPE)}),
    "x0": (torch.zeros(1, *SHAPE), {"mask": torch.ones(1, 1, 4, 4)}),
    "callback": (lambda i: None, {}),
    "img_callback": (lambda x0, i: None, {}),
    "score_corrector": (ShiftingCorrector(), {}),
    "corrector_kwargs": ({"shift": 0.2}, {"score_corrector": ShiftingCorrector()}),
    "generator": (torch.Generator().manual_seed(0), {}),
    "quantize_x0": (True, {}),
    "temperature": (0.5, {"eta": 0.7}),
    "noise_dropout": (0.5, {"eta": 0.7}),
    "dynamic_threshold": (0.1, {}),
    "ucg_schedule": ([2.] * STEPS, {}),
    "log_every_t": (1, {}),
    "normals_sequence": ([torch.zeros(1)], {}),
    "cond_fn": (lambda x, t, denoised: torch.full_like(x, 0.5), {}),
}
CASES = [(name, option) for name in NAMES for option in OPTION_DEFAULTS]
UNSUPPORTED = [(n, o) for n, o in CASES if not sampler_capabilities(n).supports(o)]
SUPPORTED = [(n, o) for n, o in CASES if sampler_capabilities(n).supports(o)]


def _model():
    model = GaussianDataModel(data_std=2.0, interpolation="log_sigma")
    model.first_stage_model = HalvingQuantizer()
    return model


def _x_T(batch=2):
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def _run(name, model=None, **options):
    """``(samples, intermediates)`` of ``STEPS`` steps from a fixed x_T (unless given ``x_T=None``)."""
    options.setdefault("x_T", _x_T())
    sampler = samplers.get_sampler(name, model or _model())
    return sampler.sample(STEPS, 2, SHAPE, torch.full((2, 1, 1, 1), 0.3, dtype=torch.float64),
                          verbose=False, **options)


def test_every_sampler_and_alias_has_capabilities_known_without_a_model():
    assert NAMES and set(samplers.CAPABILITIES) == set(NAMES)
    for name in samplers.sampler_names():
        capabilities = sampler_capabilities(name)
        assert isinstance(capabilities, SamplerCapabilities)
        assert capabilities.name == samplers.resolve_sampler_name(name)
    for name in NAMES:
        assert samplers.get_sampler(name, _model()).capabilities == sampler_capabilities(name)


def test_the_capability_table_is_the_documented_one():
    takers = {option: samplers.samplers_supporting(option)
              for option in [*OPTION_DEFAULTS, "partial_denoising"]}
    sigma = [n for n in NAMES if n not in ("ddim", "plms", "dpm", "ddpm")]
    assert takers["eta"] == ["ddim"]
    assert takers["partial_denoising"] == ["ddim"]
    assert takers["temperature"] == takers["noise_dropout"] == ["ddim"]
    assert takers["score_corrector"] == takers["ucg_schedule"] == takers["quantize_x0"] == [
        "ddim", "plms"]
    assert takers["mask"] == ["ddim", "plms", *sigma]
    assert takers["img_callback"] == takers["log_every_t"] == ["ddim", "plms", "ddpm", *sigma]
    assert takers["dynamic_threshold"] == ["ddim", "plms", *sigma]
    assert takers["callback"] == takers["generator"] == NAMES
    assert takers["normals_sequence"] == []
    assert len(sigma) == 14


@pytest.mark.parametrize("name, option", UNSUPPORTED)
def test_sample_refuses_each_unsupported_option_before_running_the_model(name, option):
    value, companions = NON_NEUTRAL[option]
    companions = {k: v for k, v in companions.items() if sampler_capabilities(name).supports(k)}
    model = _model()
    with pytest.raises(UnsupportedSamplerOption) as err:
        _run(name, model, **{option: value}, **companions)
    message = str(err.value)
    assert message.startswith(f"the {name} sampler does not support {option} (")
    assert "\n" not in message and "--" not in message
    assert model.calls == 0
    with pytest.raises(UnsupportedSamplerOption, match=f"the {name} sampler does not support "
                                                      f"{option} "):
        check_sampler_options(name, **{option: value})


@pytest.mark.parametrize("name, option", SUPPORTED)
def test_check_passes_every_supported_option_with_what_it_acts_through(name, option):
    value, companions = NON_NEUTRAL[option]
    check_sampler_options(name, **{option: value}, **companions)


@pytest.mark.parametrize("name", NAMES)
def test_neutral_values_always_pass(name):
    check_sampler_options(name, eta=0, temperature=1, noise_dropout=0., quantize_x0=False,
                          mask=None, x0=None, score_corrector=None, corrector_kwargs={},
                          ucg_schedule=None, log_every_t=100, normals_sequence=None)


def test_messages_name_the_sampler_the_value_the_reason_and_who_supports_it():
    with pytest.raises(UnsupportedSamplerOption) as err:
        check_sampler_options("k_euler", eta=0.7)
    assert str(err.value) == ("the euler sampler does not support eta (0.7): it is "
                              "deterministic; samplers that take eta: ddim")
    with pytest.raises(UnsupportedSamplerOption, match="euler_a_karras .* own eta = 1"):
        check_sampler_options("euler_a_karras", eta=0.7)
    with pytest.raises(UnsupportedSamplerOption) as err:
        check_sampler_options("dpm", mask=torch.ones(1, 1, 8, 8))
    assert str(err.value).startswith("the dpm sampler does not support mask (a tensor of shape "
                                     "(1, 1, 8, 8)): ")
    assert str(err.value).endswith("samplers that take mask: ddim, plms, euler, euler_a, heun, lms, "
                                   "dpmpp_2m, dpmpp_2m_sde, unipc (each also _karras)")
    assert issubclass(UnsupportedSamplerOption, ValueError)


def test_options_that_act_through_a_neutral_one_are_refused_not_ignored():
    with pytest.raises(UnsupportedSamplerOption, match=r"ddim sampler ignores temperature "
                                                       r"\(0.5\) when eta is 0.0"):
        _run("ddim", temperature=0.5)
    with pytest.raises(UnsupportedSamplerOption, match="ignores x0 .* when mask is None"):
        _run("euler", x0=torch.zeros(1, *SHAPE))
    with pytest.raises(UnsupportedSamplerOption, match="ignores corrector_kwargs"):
        check_sampler_options("plms", corrector_kwargs={"shift": 1.})


def test_unknown_option_names_are_refused():
    with pytest.raises(ValueError, match="unknown sampler option quantize_denoised"):
        check_sampler_options("ddim", quantize_denoised=True)
    with pytest.raises(ValueError, match="unknown sampler options"):
        SamplerCapabilities("mine", frozenset({"etta"}))


# -- every supported option does what it promises ---------------------------------------------
def _differs(name, option_value, **companions):
    """A run with the option differs from the same run without it."""
    with_option = _run(name, **companions, **option_value)[0]
    without = _run(name, **companions)[0]
    return not torch.allclose(with_option, without)


def _check_eta(name):
    def run(eta):
        return _run(name, eta=eta, generator=torch.Generator().manual_seed(3))[0]

    assert torch.equal(run(0.7), run(0.7))
    assert not torch.allclose(run(0.7), run(0.))


def _check_mask(name):
    x0 = torch.zeros(1, *SHAPE, dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1.
    masked = _run(name, mask=mask, x0=x0, generator=torch.Generator().manual_seed(3))[0]
    free = _run(name, generator=torch.Generator().manual_seed(3))[0]
    known = mask.expand_as(masked).bool()
    assert masked[known].abs().max() < 0.5 * free[known].abs().max()


def _check_callback(name):
    seen = []
    _run(name, callback=seen.append)
    assert seen == list(range(STEPS))


def _check_img_callback(name):
    seen = []
    _run(name, img_callback=lambda pred_x0, i: seen.append((i, pred_x0.shape)))
    assert seen == [(i, (2, *SHAPE)) for i in range(STEPS)]


def _check_score_corrector(name):
    corrector = ShiftingCorrector()
    assert _differs(name, {"score_corrector": corrector})
    assert corrector.calls >= STEPS
    assert not torch.allclose(_run(name, score_corrector=corrector)[0],
                              _run(name, score_corrector=corrector,
                                   corrector_kwargs={"shift": 0.3})[0])


def _check_generator(name):
    def run(seed):
        return _run(name, x_T=None, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(4), run(4))
    assert not torch.allclose(run(4), run(5))


def _check_quantize_x0(name):
    model = _model()
    quantized = _run(name, model, quantize_x0=True)[0]
    assert model.first_stage_model.calls >= STEPS
    assert not torch.allclose(quantized, _run(name)[0])


def _check_temperature(name):
    def run(temperature):
        return _run(name, eta=0.7, temperature=temperature,
                    generator=torch.Generator().manual_seed(3))[0]

    assert not torch.allclose(run(0.5), run(1.))


def _check_noise_dropout(name):
    torch.manual_seed(0)
    dropped = _run(name, eta=0.7, noise_dropout=0.5, generator=torch.Generator().manual_seed(3))
    kept = _run(name, eta=0.7, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(dropped[0], kept[0])


def _check_dynamic_threshold(name):
    assert _differs(name, {"dynamic_threshold": 0.1})


def _check_ucg_schedule(name):
    uncond = torch.zeros(2, 1, 1, 1, dtype=torch.float64)

    def guided(**options):
        return _run(name, unconditional_conditioning=uncond, **options)[0]

    assert torch.allclose(guided(ucg_schedule=[3.] * STEPS, unconditional_guidance_scale=1.),
                          guided(unconditional_guidance_scale=3.), rtol=0, atol=1e-12)
    assert not torch.allclose(guided(ucg_schedule=[1., 2., 3., 4., 5.]),
                              guided(unconditional_guidance_scale=3.))


def _check_log_every_t(name):
    assert len(_run(name, log_every_t=1)[1]["x_inter"]) == STEPS + 1
    assert len(_run(name)[1]["x_inter"]) == 3  # x_T, the first step, the last step


def _check_cond_fn(name):
    """Loss guidance with CFG: a zero gradient changes nothing bit for bit, a constant positive
    gradient moves every sample value up (the gradient's direction). 20 steps: at 5 the
    higher-order solvers extrapolate the fast-shrinking correction past zero (heun, 2m karras)."""
    uncond = torch.zeros(2, 1, 1, 1, dtype=torch.float64)

    def run(gradient=None):
        cond_fn = None if gradient is None else (lambda x, t, denoised: torch.full_like(x, gradient))
        sampler = samplers.get_sampler(name, _model())
        return sampler.sample(20, 2, SHAPE, torch.full((2, 1, 1, 1), 0.3, dtype=torch.float64),
                              verbose=False, x_T=_x_T(), cond_fn=cond_fn,
                              unconditional_conditioning=uncond, unconditional_guidance_scale=3.,
                              generator=torch.Generator().manual_seed(3))[0]

    plain = run()
    assert torch.equal(run(0.), plain)
    assert float((run(0.5) - plain).min()) > 1.


EFFECTS = {
    "eta": _check_eta, "mask": _check_mask, "x0": _check_mask, "callback": _check_callback,
    "img_callback": _check_img_callback, "score_corrector": _check_score_corrector,
    "corrector_kwargs": _check_score_corrector, "generator": _check_generator,
    "quantize_x0": _check_quantize_x0, "temperature": _check_temperature,
    "noise_dropout": _check_noise_dropout, "dynamic_threshold": _check_dynamic_threshold,
    "ucg_schedule": _check_ucg_schedule, "log_every_t": _check_log_every_t,
    "cond_fn": _check_cond_fn,
}


@pytest.mark.parametrize("name, option", SUPPORTED)
def test_every_supported_option_has_its_effect(name, option):
    EFFECTS[option](name)


@pytest.mark.parametrize("name", NAMES)
def test_partial_denoising_capability_matches_the_sampler_methods(name):
    sampler = samplers.get_sampler(name, _model())
    has_methods = all(hasattr(sampler, m) for m in ("stochastic_encode", "decode", "encode"))
    assert has_methods == sampler_capabilities(name).partial_denoising
