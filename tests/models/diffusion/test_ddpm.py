"""DDPM core of ldm/models/diffusion/ddpm.py: schedule buffers against closed forms written here,
parameterization algebra, losses, DiffusionWrapper routing, checkpoint loading, optimizers, EMA,
classifier-free-guidance training."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.models.diffusion.ddpm import DDPM, DiffusionWrapper
from ldm.util import CheckpointError
from tests.tiny_configs import tiny_unet_config

SCHEDULE_BUFFERS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2"]
IDENTITY_UNET = {"target": "torch.nn.Identity"}


class RecordingUNet(nn.Module):
    """Stands in for the UNet: records what it is called with and returns a scaled slice of x."""

    def __init__(self, out_channels: int = 4):
        super().__init__()
        self.out_channels = out_channels
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, timesteps=None, context=None, y=None):
        self.calls.append({"x": x, "t": timesteps, "context": context, "y": y})
        return x[:, :self.out_channels] * self.scale


def schedule_only_ddpm(**kwargs) -> DDPM:
    kwargs.setdefault("use_ema", False)
    return DDPM(unet_config=IDENTITY_UNET, **kwargs)


def probed_ddpm(**kwargs) -> DDPM:
    """A DDPM whose network is a RecordingUNet (4 channels)."""
    model = schedule_only_ddpm(channels=4, image_size=8, **kwargs)
    model.model.diffusion_model = RecordingUNet()
    return model


def tiny_pixel_ddpm(**kwargs) -> DDPM:
    unet = tiny_unet_config(use_spatial_transformer=False, context_dim=None)
    return DDPM(unet_config=unet, channels=4, image_size=8, **kwargs)


# --------------------------------------------------------------------------------------------
# Closed forms, written independently of the implementation (float64)
# --------------------------------------------------------------------------------------------
def reference_betas(schedule, n, start, end, s=8e-3):
    if schedule == "linear":  # linear in sqrt(beta)
        return np.array([(math.sqrt(start) + (math.sqrt(end) - math.sqrt(start)) * i / (n - 1)) ** 2
                         for i in range(n)])
    if schedule == "sqrt_linear":
        return np.array([start + (end - start) * i / (n - 1) for i in range(n)])
    if schedule == "sqrt":
        return np.array([math.sqrt(start + (end - start) * i / (n - 1)) for i in range(n)])
    if schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17, clipped at 0.999
        f = [math.cos((i / n + s) / (1 + s) * math.pi / 2) ** 2 for i in range(n + 1)]
        return np.array([min(max(1 - f[i + 1] / f[i], 0.0), 0.999) for i in range(n)])
    raise ValueError(schedule)


def reference_buffers(betas, v_posterior=0.0):
    n = len(betas)
    alphas = 1 - betas
    abar = np.array([np.prod(alphas[:i + 1]) for i in range(n)])
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    # Posterior of x_{t-1} given x_t and x_0 by Gaussian conditioning: precision adds up.
    with np.errstate(divide="ignore"):
        precision = 1 / (1 - abar_prev) + alphas / betas
    tilde_beta = np.where(np.isinf(precision), 0.0, 1 / precision)
    var = (1 - v_posterior) * tilde_beta + v_posterior * betas
    with np.errstate(divide="ignore", invalid="ignore"):
        coef1 = np.where(abar_prev == 1, betas * 1 / (1 - abar),
                         tilde_beta * np.sqrt(abar_prev) / (1 - abar_prev))
    coef2 = np.where(abar_prev == 1, 0.0, tilde_beta * np.sqrt(alphas) / betas)
    return {
        "betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar ** 0.5, "sqrt_one_minus_alphas_cumprod": (1 - abar) ** 0.5,
        "log_one_minus_alphas_cumprod": np.log(1 - abar), "sqrt_recip_alphas_cumprod": abar ** -0.5,
        "sqrt_recipm1_alphas_cumprod": (1 / abar - 1) ** 0.5, "posterior_variance": var,
        "posterior_log_variance_clipped": np.log(np.maximum(var, 1e-20)),
        "posterior_mean_coef1": coef1, "posterior_mean_coef2": coef2,
    }


SCHEDULE_CASES = [("linear", 0.00085, 0.012), ("linear", 1e-4, 2e-2), ("cosine", 1e-4, 2e-2),
                  ("sqrt_linear", 1e-4, 2e-2), ("sqrt", 1e-4, 2e-2)]


@pytest.mark.parametrize("schedule,start,end", SCHEDULE_CASES)
def test_every_schedule_buffer_equals_its_closed_form(schedule, start, end):
    model = schedule_only_ddpm(beta_schedule=schedule, linear_start=start, linear_end=end)
    expected = reference_buffers(reference_betas(schedule, 1000, start, end))
    assert model.num_timesteps == 1000
    for name in SCHEDULE_BUFFERS:
        got = getattr(model, name)
        assert got.dtype == torch.float32 and got.shape == (1000,), name
        want = torch.tensor(expected[name], dtype=torch.float32)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-30, msg=name)


def test_buffers_are_the_float64_maths_rounded_once_to_float32():
    model = schedule_only_ddpm(linear_start=0.00085, linear_end=0.012)
    expected = reference_buffers(reference_betas("linear", 1000, 0.00085, 0.012))
    exact = sum(torch.equal(model.sqrt_recipm1_alphas_cumprod[i],
                            torch.tensor(expected["sqrt_recipm1_alphas_cumprod"][i], dtype=torch.float32))
                for i in range(1000))
    assert exact >= 990  # float32 maths would disagree in the last bit far more often


def test_persistent_buffers_are_the_twelve_schedule_buffers_in_original_order():
    keys = list(schedule_only_ddpm().state_dict())
    assert keys == SCHEDULE_BUFFERS
    assert "lvlb_weights" not in keys and "logvar" not in keys


def test_v_posterior_mixes_posterior_variance_towards_beta():
    model = schedule_only_ddpm(v_posterior=0.3)
    expected = reference_buffers(reference_betas("linear", 1000, 1e-4, 2e-2), v_posterior=0.3)
    torch.testing.assert_close(model.posterior_variance,
                               torch.tensor(expected["posterior_variance"], dtype=torch.float32), rtol=2e-6, atol=0)


def test_given_betas_replace_the_named_schedule():
    betas = np.linspace(0.01, 0.2, 7)
    model = schedule_only_ddpm(given_betas=OmegaConf.create(betas.tolist()), beta_schedule="cosine")
    assert model.num_timesteps == 7
    torch.testing.assert_close(model.alphas_cumprod, torch.tensor(np.cumprod(1 - betas), dtype=torch.float32))


def test_eps_lvlb_weights_follow_ho_et_al_with_step_zero_copied_from_step_one():
    model = schedule_only_ddpm(parameterization="eps")
    ref = reference_buffers(reference_betas("linear", 1000, 1e-4, 2e-2))
    alphas = 1 - ref["betas"]
    with np.errstate(divide="ignore"):
        weights = ref["betas"] ** 2 / (2 * ref["posterior_variance"] * alphas * (1 - ref["alphas_cumprod"]))
    weights[0] = weights[1]
    # float32 cancellation in (1 - abar) near t = 0 costs a few 1e-5 of relative precision ...
    torch.testing.assert_close(model.lvlb_weights, torch.tensor(weights, dtype=torch.float32), rtol=2e-4, atol=0)
    # ... because the original computes them in float32 from the stored buffers: reproduce that bit for bit.
    f32 = model.betas ** 2 / (2 * model.posterior_variance * torch.tensor(alphas, dtype=torch.float32)
                              * (1 - model.alphas_cumprod))
    f32[0] = f32[1]
    assert torch.equal(model.lvlb_weights, f32)


def test_x0_lvlb_weights_keep_the_original_two_minus_abar_quirk():
    model = schedule_only_ddpm(parameterization="x0")
    abar = reference_buffers(reference_betas("linear", 1000, 1e-4, 2e-2))["alphas_cumprod"]
    weights = 0.5 * np.sqrt(abar) / (2 - abar)
    weights[0] = weights[1]
    torch.testing.assert_close(model.lvlb_weights, torch.tensor(weights, dtype=torch.float32), rtol=1e-6, atol=0)


def test_v_lvlb_weights_are_ones():
    assert torch.equal(schedule_only_ddpm(parameterization="v").lvlb_weights, torch.ones(1000))


def test_unknown_parameterization_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="eps, x0, v"):
        schedule_only_ddpm(parameterization="mu")


# --------------------------------------------------------------------------------------------
# Forward process and parameterizations
# --------------------------------------------------------------------------------------------
def _float64_model():
    return schedule_only_ddpm(linear_start=0.00085, linear_end=0.012).double()


def test_q_sample_is_the_forward_marginal_and_q_mean_variance_agrees():
    model = _float64_model()
    x0, noise = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    abar = model.alphas_cumprod[t].reshape(4, 1, 1, 1)
    # the buffers are float32 roundings, so sqrt(1 - abar) from abar agrees to ~1e-6 only
    torch.testing.assert_close(model.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise,
                               atol=5e-6, rtol=0)
    mean, var, log_var = model.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, abar.sqrt() * x0)
    torch.testing.assert_close(var, (1 - abar).expand_as(var))
    torch.testing.assert_close(log_var, torch.log(1 - abar).expand_as(log_var), atol=0, rtol=1e-5)


@pytest.mark.parametrize("t_value", [0, 1, 250, 999])
def test_eps_x0_and_v_predictions_round_trip(t_value):
    model = _float64_model()
    x0, eps = torch.randn(3, 4, 6, 6, dtype=torch.float64), torch.randn(3, 4, 6, 6, dtype=torch.float64)
    t = torch.full((3,), t_value)
    x_t = model.q_sample(x0, t, eps)
    v = model.get_v(x0, eps, t)
    torch.testing.assert_close(model.predict_start_from_noise(x_t, t, eps), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.predict_start_from_z_and_v(x_t, t, v), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.predict_eps_from_z_and_v(x_t, t, v), eps, atol=1e-6, rtol=0)


def test_q_posterior_mean_is_the_bayes_posterior_of_the_forward_process():
    model = _float64_model()
    x0, x_t = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([5, 700])
    mean, var, log_var = model.q_posterior(x0, x_t, t)
    abar_prev = model.alphas_cumprod_prev[t].reshape(2, 1, 1, 1)
    alpha = 1 - model.betas[t].reshape(2, 1, 1, 1)
    precision = 1 / (1 - abar_prev) + alpha / (1 - alpha)
    bayes_mean = (abar_prev.sqrt() * x0 / (1 - abar_prev) + alpha.sqrt() * x_t / (1 - alpha)) / precision
    torch.testing.assert_close(mean, bayes_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, (1 / precision).expand_as(var), rtol=1e-6, atol=0)
    torch.testing.assert_close(log_var, torch.log(var))


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_p_losses_regresses_the_target_of_each_parameterization(parameterization):
    model = probed_ddpm(parameterization=parameterization, original_elbo_weight=0.25, l_simple_weight=2.0)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([3, 400, 999])
    loss, logs = model.p_losses(x0, t, noise=noise)
    x_t = model.alphas_cumprod[t].sqrt().reshape(3, 1, 1, 1) * x0 \
        + (1 - model.alphas_cumprod[t]).sqrt().reshape(3, 1, 1, 1) * noise
    target = {"eps": noise, "x0": x0,
              "v": model.alphas_cumprod[t].sqrt().reshape(3, 1, 1, 1) * noise
              - (1 - model.alphas_cumprod[t]).sqrt().reshape(3, 1, 1, 1) * x0}[parameterization]
    per_sample = ((0.5 * x_t - target) ** 2).mean(dim=(1, 2, 3))
    vlb = (model.lvlb_weights[t] * per_sample).mean()
    torch.testing.assert_close(logs["train/loss_simple"], per_sample.mean())
    torch.testing.assert_close(logs["train/loss_vlb"], vlb)
    torch.testing.assert_close(loss, 2.0 * per_sample.mean() + 0.25 * vlb)
    torch.testing.assert_close(model.model.diffusion_model.calls[0]["x"], x_t)


def _noised_input(model: DDPM, x0: torch.Tensor, t: torch.Tensor, seed: int) -> torch.Tensor:
    """What the network sees in a training step (``p_losses`` drawing its own noise) under ``seed``."""
    model.model.diffusion_model.calls.clear()
    torch.manual_seed(seed)
    model.p_losses(x0, t)
    return model.model.diffusion_model.calls[0]["x"]


def test_without_noise_offset_training_noise_is_one_randn_draw_and_leaves_the_rng_as_before():
    model, x0, t = probed_ddpm(), torch.randn(3, 4, 8, 8), torch.tensor([3, 400, 999])
    seen = _noised_input(model, x0, t, seed=7)
    after = torch.randn(1)
    torch.manual_seed(7)
    noise = torch.randn_like(x0)
    torch.testing.assert_close(seen, model.q_sample(x0, t, noise), rtol=0, atol=0)
    torch.testing.assert_close(after, torch.randn(1), rtol=0, atol=0)


def test_noise_offset_adds_one_constant_normal_per_sample_and_channel():
    model, x0, t = probed_ddpm(noise_offset=0.1), torch.randn(3, 4, 8, 8), torch.tensor([3, 400, 999])
    seen = _noised_input(model, x0, t, seed=7)
    torch.manual_seed(7)
    noise = torch.randn_like(x0)
    offset = torch.randn(3, 4, 1, 1)
    torch.testing.assert_close(seen, model.q_sample(x0, t, noise + 0.1 * offset))
    torch.manual_seed(7)
    with_offset = model.training_noise(x0)
    torch.manual_seed(7)
    drawn = with_offset - torch.randn_like(x0)
    assert drawn.std() > 0.01
    torch.testing.assert_close(drawn, drawn[:, :, :1, :1].expand_as(drawn))


def test_negative_noise_offset_is_refused():
    with pytest.raises(ValueError, match="noise_offset"):
        probed_ddpm(noise_offset=-0.1)


def test_l1_loss_type_uses_absolute_error():
    model = probed_ddpm(loss_type="l1")
    pred, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(model.get_loss(pred, target), (pred - target).abs().mean())
    with pytest.raises(ValueError, match="loss_type"):
        probed_ddpm(loss_type="huber")


def test_p_sample_is_posterior_mean_plus_scaled_noise_and_noiseless_at_step_zero():
    model = probed_ddpm()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 600])
    mean, _, log_var = model.p_mean_variance(x, t, clip_denoised=False)
    torch.manual_seed(7)
    out = model.p_sample(x, t, clip_denoised=False)
    torch.manual_seed(7)
    noise = torch.randn_like(x)
    torch.testing.assert_close(out[0], mean[0])
    torch.testing.assert_close(out[1], mean[1] + (0.5 * log_var[1]).exp() * noise[1])


def test_pixel_ddpm_samples_have_the_configured_shape():
    model = tiny_pixel_ddpm(timesteps=4, use_ema=False, log_every_t=2)
    samples, intermediates = model.sample(batch_size=2, return_intermediates=True)
    assert samples.shape == (2, 4, 8, 8) and torch.isfinite(samples).all()
    assert len(intermediates) == 1 + 3  # x_T, steps 3 (last), 2, 0


# --------------------------------------------------------------------------------------------
# DiffusionWrapper
# --------------------------------------------------------------------------------------------
def probed_wrapper(conditioning_key, unet_config=None):
    wrapper = DiffusionWrapper(unet_config or IDENTITY_UNET, conditioning_key)
    wrapper.diffusion_model = RecordingUNet()
    return wrapper, wrapper.diffusion_model


X = torch.randn(2, 4, 8, 8)
T = torch.tensor([1, 2])
C_CAT = [torch.randn(2, 1, 8, 8), torch.randn(2, 4, 8, 8)]
C_CROSS = [torch.randn(2, 3, 32), torch.randn(2, 5, 32)]
C_ADM = torch.randn(2, 16)


@pytest.mark.parametrize("key,want_x,want_context,want_y", [
    (None, X, None, None),
    ("concat", torch.cat([X] + C_CAT, 1), None, None),
    ("crossattn", X, torch.cat(C_CROSS, 1), None),
    ("hybrid", torch.cat([X] + C_CAT, 1), torch.cat(C_CROSS, 1), None),
    ("hybrid-adm", torch.cat([X] + C_CAT, 1), torch.cat(C_CROSS, 1), C_ADM),
    ("crossattn-adm", X, torch.cat(C_CROSS, 1), C_ADM),
    ("adm", X, None, C_CROSS[0]),
])
def test_wrapper_routes_each_conditioning_key(key, want_x, want_context, want_y):
    wrapper, unet = probed_wrapper(key)
    wrapper(X, T, c_concat=C_CAT, c_crossattn=C_CROSS, c_adm=C_ADM)
    call = unet.calls[0]
    assert torch.equal(call["x"], want_x) and torch.equal(call["t"], T)
    for got, want in ((call["context"], want_context), (call["y"], want_y)):
        assert (got is None) if want is None else torch.equal(got, want)


def test_wrapper_with_sequential_crossattn_passes_the_list_and_leaves_the_config_alone():
    config = OmegaConf.create({"target": "torch.nn.Identity", "sequential_crossattn": True})
    wrapper, unet = probed_wrapper("crossattn", config)
    wrapper(X, T, c_crossattn=C_CROSS)
    assert isinstance(unet.calls[0]["context"], list) and len(unet.calls[0]["context"]) == 2
    assert config.sequential_crossattn is True


def test_wrapper_refuses_unknown_keys_and_missing_adm():
    with pytest.raises(ValueError, match="conditioning_key"):
        DiffusionWrapper(IDENTITY_UNET, "cross")
    wrapper, _ = probed_wrapper("crossattn-adm")
    with pytest.raises(ValueError, match="c_adm"):
        wrapper(X, T, c_crossattn=C_CROSS)


def test_wrapper_keys_put_the_unet_under_model_diffusion_model():
    keys = list(tiny_pixel_ddpm(use_ema=False).state_dict())
    assert keys[:12] == SCHEDULE_BUFFERS
    assert keys[12] == "model.diffusion_model.time_embed.0.weight"
    assert all(k.startswith("model.diffusion_model.") for k in keys[12:])


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def _perturbed_state(model):
    return {k: v + 1.0 if k.startswith("model.") else v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("container", ["wrapped", "bare", "safetensors"])
def test_init_from_ckpt_loads_any_container_and_drops_ignored_prefixes(tmp_path, container, capsys):
    source = tiny_pixel_ddpm(use_ema=False)
    state = _perturbed_state(source)
    path = tmp_path / ("m.safetensors" if container == "safetensors" else "m.ckpt")
    if container == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 3} if container == "wrapped" else state, path)
    target = tiny_pixel_ddpm(use_ema=False)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    target.init_from_ckpt(str(path), ignore_keys=["model.diffusion_model.out."])
    after = target.state_dict()
    for key in after:
        if key.startswith("model.diffusion_model.out."):
            assert torch.equal(after[key], before[key]), key
        else:
            assert torch.equal(after[key], state[key]), key
    printed = capsys.readouterr().out
    assert "Deleting key model.diffusion_model.out.2.weight" in printed
    assert "with 4 missing and 0 unexpected keys" in printed


def test_ckpt_path_in_the_constructor_loads_and_only_model_loads_the_wrapper(tmp_path):
    state = _perturbed_state(tiny_pixel_ddpm(use_ema=False))
    torch.save({"state_dict": state}, tmp_path / "full.ckpt")
    loaded = tiny_pixel_ddpm(use_ema=False, ckpt_path=str(tmp_path / "full.ckpt"))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(loaded.state_dict()[key], state[key])
    unet_only = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    torch.save(unet_only, tmp_path / "unet.ckpt")
    loaded = tiny_pixel_ddpm(use_ema=False, ckpt_path=str(tmp_path / "unet.ckpt"), load_only_unet=True)
    assert torch.equal(loaded.state_dict()[key], state[key])


class ArbitraryObject:
    """Pickled into a checkpoint, it must make the safe loader refuse the file."""


def test_unsafe_or_missing_checkpoints_raise_checkpoint_error(tmp_path):
    model = probed_ddpm()
    with pytest.raises(CheckpointError, match="not found"):
        model.init_from_ckpt(str(tmp_path / "nope.ckpt"))
    torch.save({"state_dict": {"betas": torch.zeros(1000)}, "code": ArbitraryObject()}, tmp_path / "pickle.ckpt")
    with pytest.raises(CheckpointError):
        model.init_from_ckpt(str(tmp_path / "pickle.ckpt"))


def test_shape_mismatch_without_make_it_fit_raises_a_checkpoint_error(tmp_path):
    small = tiny_pixel_ddpm(use_ema=False)
    torch.save(small.state_dict(), tmp_path / "small.ckpt")
    wide = DDPM(unet_config=tiny_unet_config(use_spatial_transformer=False, context_dim=None, in_channels=6),
                channels=6, image_size=8, use_ema=False)
    with pytest.raises(CheckpointError, match="make_it_fit"):
        wide.init_from_ckpt(str(tmp_path / "small.ckpt"))


def test_make_it_fit_tiles_old_weights_and_divides_by_reuse_count_plus_one(tmp_path):
    small = tiny_pixel_ddpm(use_ema=False)
    torch.save(small.state_dict(), tmp_path / "small.ckpt")
    wide = DDPM(unet_config=tiny_unet_config(use_spatial_transformer=False, context_dim=None,
                                             in_channels=6, out_channels=6),
                channels=6, image_size=8, use_ema=False, make_it_fit=True, ckpt_path=str(tmp_path / "small.ckpt"))
    old_in = small.state_dict()["model.diffusion_model.input_blocks.0.0.weight"]  # 32 x 4 x 3 x 3
    new_in = wide.state_dict()["model.diffusion_model.input_blocks.0.0.weight"]  # 32 x 6 x 3 x 3
    uses = [sum(1 for j in range(6) if j % 4 == col) for col in range(4)]  # columns 0,1 used twice
    for j in range(6):
        torch.testing.assert_close(new_in[:, j], old_in[:, j % 4] / (1 + uses[j % 4]))
    old_bias = small.state_dict()["model.diffusion_model.out.2.bias"]  # 4
    new_bias = wide.state_dict()["model.diffusion_model.out.2.bias"]  # 6
    torch.testing.assert_close(new_bias, old_bias[torch.arange(6) % 4])


def test_checkpoint_skip_prefixes_is_empty_for_plain_models():
    assert probed_ddpm().checkpoint_skip_prefixes() == {}


# --------------------------------------------------------------------------------------------
# Optimizers, EMA, classifier-free-guidance training
# --------------------------------------------------------------------------------------------
SCHEDULER = {"target": "ldm.lr_scheduler.LambdaLinearScheduler",
             "params": {"warm_up_steps": [10], "cycle_lengths": [10000000000000], "f_start": [1.e-6],
                        "f_max": [1.], "f_min": [1.]}}


def test_configure_optimizers_is_adamw_with_a_per_step_lambda_lr():
    model = tiny_pixel_ddpm(use_ema=False, scheduler_config=OmegaConf.create(SCHEDULER))
    model.learning_rate = 1e-3
    optimizers, schedulers = model.configure_optimizers()
    opt, sched = optimizers[0], schedulers[0]
    assert isinstance(opt, torch.optim.AdamW) and sched["interval"] == "step" and sched["frequency"] == 1
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.model.parameters()}
    for _ in range(5):
        opt.step()
        sched["scheduler"].step()
    factor = sched["scheduler"].lr_lambdas[0](5)
    assert 0.4 < factor < 0.6
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)


def test_configure_optimizers_without_scheduler_returns_adamw_and_includes_learned_logvar():
    model = tiny_pixel_ddpm(use_ema=False, learn_logvar=True, logvar_init=-1.0)
    model.learning_rate = 2e-4
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 2e-4
    assert any(p is model.logvar for p in opt.param_groups[0]["params"])
    assert isinstance(model.logvar, nn.Parameter) and torch.equal(model.logvar.data, torch.full((1000,), -1.0))
    assert "logvar" in model.state_dict()


def test_configure_optimizers_without_learning_rate_says_how_to_set_it():
    with pytest.raises(AttributeError, match="base_learning_rate"):
        probed_ddpm().configure_optimizers()


def test_ema_update_moves_shadows_and_ema_scope_swaps_then_restores():
    model = tiny_pixel_ddpm(use_ema=True)
    param = model.model.diffusion_model.input_blocks[0][0].weight
    start = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    model.on_train_batch_end(None, None, 0)
    shadow = model.model_ema.diffusion_modelinput_blocks00weight
    decay = min(0.9999, (1 + 1) / (10 + 1))  # warm-up decay after the first update
    torch.testing.assert_close(shadow, start + (1 - decay) * 1.0)
    trained = param.detach().clone()
    with model.ema_scope("test"):
        torch.testing.assert_close(param.detach(), shadow)
    assert torch.equal(param.detach(), trained)


def test_reset_options_need_ema_and_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="ckpt_path"):
        tiny_pixel_ddpm(use_ema=True, reset_ema=True)
    with pytest.raises(ValueError, match="use_ema"):
        tiny_pixel_ddpm(use_ema=False, reset_num_ema_updates=True)
    model = tiny_pixel_ddpm(use_ema=True)
    model.on_train_batch_end()
    torch.save({"state_dict": _perturbed_state(model)}, tmp_path / "ema.ckpt")
    restored = tiny_pixel_ddpm(use_ema=True, ckpt_path=str(tmp_path / "ema.ckpt"), reset_ema=True)
    weight = restored.model.diffusion_model.input_blocks[0][0].weight
    assert torch.equal(restored.model_ema.diffusion_modelinput_blocks00weight, weight.detach())
    assert int(restored.model_ema.num_updates) == 0


def test_ucg_training_replaces_items_with_the_configured_probability():
    model = probed_ddpm(ucg_training=OmegaConf.create({"txt": {"p": 0.3, "val": None},
                                                       "cls": {"p": 1.0, "val": 7}}))
    model.ucg_prng = np.random.RandomState(0)
    batch = {"txt": ["a prompt"] * 4000, "cls": torch.arange(5)}
    model.apply_ucg_training(batch)
    dropped = sum(1 for t in batch["txt"] if t == "")
    assert abs(dropped / 4000 - 0.3) < 0.03
    assert all(t in ("", "a prompt") for t in batch["txt"])
    assert torch.equal(batch["cls"], torch.full((5,), 7))
    never = probed_ddpm(ucg_training={"txt": {"p": 0.0, "val": "x"}})
    batch = {"txt": ["keep"] * 100}
    never.apply_ucg_training(batch)
    assert batch["txt"] == ["keep"] * 100


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_casts_keep_the_noise_schedule_in_float32(dtype):
    model = DDPM(unet_config=tiny_unet_config(), use_ema=False)
    before = {name: getattr(model, name).clone() for name in SCHEDULE_BUFFERS + ["lvlb_weights"]}
    model = model.to(dtype)
    assert next(model.model.parameters()).dtype == dtype
    for name, value in before.items():
        assert getattr(model, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(model, name), value, rtol=0, atol=0)
    assert (1 - model.alphas_cumprod).min() > 0  # rounded to bfloat16 it would be 0 at t = 0
    model = model.double()
    assert model.alphas_cumprod.dtype == torch.float64  # wider casts are not held back


def test_a_half_precision_checkpoint_keeps_the_configs_float32_schedule():
    """A cosine schedule's alphas_cumprod underflows to 0 in float16 (every sampler then divides by
    it): the schedule of an fp16 copy of a checkpoint comes out as the config computes it."""
    model = schedule_only_ddpm(beta_schedule="cosine")
    half = {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}
    assert (half["alphas_cumprod"] == 0).any()
    loaded = schedule_only_ddpm(beta_schedule="cosine")
    loaded.load_state_dict(half)
    for name in ("alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "betas"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    assert torch.isfinite(loaded.sqrt_recip_alphas_cumprod).all()


def test_a_half_precision_schedule_that_differs_from_the_config_is_loaded_as_stored():
    other = schedule_only_ddpm(linear_start=0.00085, linear_end=0.012)
    half = {key: value.half() if value.is_floating_point() else value for key, value in other.state_dict().items()}
    loaded = schedule_only_ddpm()  # linear 1e-4 .. 2e-2: not the stored schedule
    loaded.load_state_dict(half)
    assert torch.equal(loaded.betas, half["betas"].float())
