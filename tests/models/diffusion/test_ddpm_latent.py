"""LatentDiffusion of ldm/models/diffusion/ddpm.py on the tiny configs: stages, encoding and
decoding, conditioning, losses, sampling loops, std-rescaling, optimizers, Lightning training."""
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config
from tests.models.diffusion.test_ddpm import SCHEDULE_BUFFERS, SCHEDULER, RecordingUNet
from tests.tiny_configs import tiny_latent_diffusion_batch, tiny_latent_diffusion_config


def tiny_ld(**overrides) -> LatentDiffusion:
    return instantiate_from_config(tiny_latent_diffusion_config(**overrides))


class TextStub(nn.Module):
    """A conditioning encoder for tests: strings -> (B, 2, 32) by length, with a trainable scale."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        lengths = torch.tensor([float(len(t)) for t in texts])
        return self.scale * lengths[:, None, None].expand(len(texts), 2, 32).clone()


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------
def test_tiny_model_has_the_original_key_layout_and_frozen_stages():
    model = tiny_ld()
    keys = list(model.state_dict())
    assert keys[:12] == SCHEDULE_BUFFERS
    prefixes = [k.split(".")[0] for k in keys[12:]]
    assert prefixes == sorted(prefixes, key=["model", "first_stage_model"].index)
    model.train()
    assert model.model.training and not model.first_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    assert model.first_stage_model.train(True) is model.first_stage_model  # disabled_train
    assert model.clip_denoised is False and model.num_downs == 1


@pytest.mark.parametrize("overrides,want_key", [
    ({"conditioning_key": None}, "concat"),
    ({"conditioning_key": None, "concat_mode": False}, "crossattn"),
    ({"cond_stage_config": "__is_unconditional__"}, None),
    ({"cond_stage_config": "__is_unconditional__", "force_null_conditioning": True}, "crossattn"),
])
def test_conditioning_key_defaults_follow_the_original(overrides, want_key):
    config = tiny_latent_diffusion_config(**overrides)
    if want_key == "concat":
        config.params.unet_config.params.in_channels = 8
        config.params.unet_config.params.use_spatial_transformer = False
        config.params.unet_config.params.context_dim = None
    model = instantiate_from_config(config)
    assert model.model.conditioning_key == want_key


def test_special_cond_stage_strings():
    assert tiny_ld(cond_stage_config="__is_unconditional__").cond_stage_model is None
    model = tiny_ld(cond_stage_config="__is_first_stage__")
    assert model.cond_stage_model is model.first_stage_model
    with pytest.raises(ValueError, match="trainable"):
        tiny_ld(cond_stage_config="__is_first_stage__", cond_stage_trainable=True)


def test_more_conditioning_steps_than_timesteps_is_refused():
    with pytest.raises(ValueError, match="num_timesteps_cond"):
        tiny_ld(num_timesteps_cond=2000)


def test_short_conditioning_schedule_spreads_ids_then_holds_the_last_step():
    model = tiny_ld(num_timesteps_cond=5, timesteps=100)
    assert model.shorten_cond_schedule
    expected = torch.full((100,), 99, dtype=torch.long)
    expected[:5] = torch.tensor([0, 25, 50, 74, 99])  # round(linspace(0, 99, 5)), half to even
    assert torch.equal(model.cond_ids, expected)


def test_ckpt_path_is_applied_after_the_stages_exist(tmp_path):
    source = tiny_ld()
    state = {k: v + 1 if k.startswith("first_stage_model.") else v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ld.ckpt")
    loaded = tiny_ld(ckpt_path=str(tmp_path / "ld.ckpt"), ignore_keys=["model."])
    key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(loaded.state_dict()[key], state[key]) and loaded.restarted_from_ckpt
    assert not torch.equal(loaded.state_dict()["model.diffusion_model.out.0.weight"],
                           state["model.diffusion_model.out.0.weight"] + 1)


# --------------------------------------------------------------------------------------------
# Encoding, decoding, conditioning
# --------------------------------------------------------------------------------------------
def test_first_stage_encoding_is_a_posterior_sample_times_scale_factor():
    model = tiny_ld()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = model.encode_first_stage(x)
    torch.manual_seed(3)
    z = model.get_first_stage_encoding(posterior)
    torch.manual_seed(3)
    expected = 0.18215 * (posterior.mean + posterior.std * torch.randn_like(posterior.mean))
    torch.testing.assert_close(z, expected)
    assert torch.equal(model.get_first_stage_encoding(torch.ones(1, 4, 8, 8)), torch.full((1, 4, 8, 8), 0.18215))
    with pytest.raises(NotImplementedError, match="encoder_posterior"):
        model.get_first_stage_encoding([1, 2])


def test_decode_first_stage_undoes_the_scale_factor():
    model = tiny_ld()
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(model.decode_first_stage(z), model.first_stage_model.decode(z / 0.18215))
    out = model.differentiable_decode_first_stage(z.requires_grad_())
    out.sum().backward()
    assert z.grad is not None


def test_learned_conditioning_uses_encode_mode_forward_or_the_named_method():
    model = tiny_ld()
    c = torch.randn(2, 3, 32)
    assert torch.equal(model.get_learned_conditioning(c), c)  # nn.Identity has no encode: forward
    model.cond_stage_model = TextStub()
    assert model.get_learned_conditioning(["ab", "abcd"])[:, 0, 0].tolist() == [2.0, 4.0]

    class GaussianEncoder(nn.Module):
        def encode(self, x):
            return DiagonalGaussianDistribution(torch.cat([x, torch.full_like(x, 5.0)], dim=1))

        def other(self, x):
            return -x

    model.cond_stage_model = GaussianEncoder()
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(model.get_learned_conditioning(x), x)  # the mode, not a sample
    model.cond_stage_forward = "other"
    assert torch.equal(model.get_learned_conditioning(x), -x)
    model.cond_stage_forward = "missing"
    with pytest.raises(AttributeError, match="missing"):
        model.get_learned_conditioning(x)


def test_unconditional_conditioning_repeats_the_null_label_encoding():
    model = tiny_ld()
    model.cond_stage_model = TextStub()
    uc = model.get_unconditional_conditioning(3, OmegaConf.create(["xyz"]))
    assert uc.shape == (3, 2, 32) and torch.all(uc == 3.0)
    with pytest.raises(NotImplementedError, match="null_label"):
        model.get_unconditional_conditioning(3)


def test_unconditional_conditioning_of_class_models_asks_the_encoder():
    model = tiny_ld(cond_stage_key="class_label")

    class ClassStub(nn.Module):
        def get_unconditional_conditioning(self, batch_size, device=None):
            return {"class_label": torch.full((batch_size,), 1000, device=device)}

        def forward(self, batch):
            return batch["class_label"].float()[:, None, None].expand(-1, 1, 32)

    model.cond_stage_model = ClassStub()
    assert torch.all(model.get_unconditional_conditioning(2) == 1000.0)


def test_get_input_returns_latent_conditioning_and_the_requested_extras():
    model = tiny_ld()
    batch = tiny_latent_diffusion_batch(3)
    z, c, x, xrec, x_again, xc = model.get_input(batch, "jpg", return_first_stage_outputs=True, return_x=True,
                                                 return_original_cond=True, bs=2)
    assert z.shape == (2, 4, 8, 8) and x.shape == (2, 3, 16, 16) and xrec.shape == (2, 3, 16, 16)
    assert torch.equal(x, batch["jpg"][:2].permute(0, 3, 1, 2)) and torch.equal(x_again, x)
    assert torch.equal(c, batch["txt"][:2]) and torch.equal(xc, batch["txt"])
    _, c_img = model.get_input(batch, "jpg", cond_key="jpg")
    assert torch.equal(c_img, batch["jpg"].permute(0, 3, 1, 2))


def test_trainable_conditioning_is_encoded_in_forward_not_in_get_input():
    model = tiny_ld(cond_stage_trainable=True)
    model.cond_stage_model = TextStub()
    batch = {"jpg": tiny_latent_diffusion_batch(2)["jpg"], "txt": ["a", "bb"]}
    z, c = model.get_input(batch, "jpg")
    assert c == ["a", "bb"] and model.cond_stage_model.calls == 0
    _, c_forced = model.get_input(batch, "jpg", force_c_encode=True)
    assert c_forced.shape == (2, 2, 32)
    model.model.diffusion_model = RecordingUNet()
    model(z, c)
    assert model.cond_stage_model.calls == 2
    assert model.model.diffusion_model.calls[0]["context"][:, 0, 0].tolist() == [1.0, 2.0]


def test_positional_encodings_are_refused_clearly():
    model = tiny_ld(use_positional_encodings=True)
    with pytest.raises(NotImplementedError, match="use_positional_encodings"):
        model.get_input(tiny_latent_diffusion_batch(1), "jpg")


@pytest.mark.parametrize("key,cond,want", [
    ("concat", torch.ones(2, 1, 8, 8), "c_concat"),
    ("crossattn", torch.ones(2, 3, 32), "c_crossattn"),
    ("hybrid", [torch.ones(2, 3, 32)], "c_crossattn"),
])
def test_apply_model_wraps_plain_conditioning_by_key(key, cond, want):
    model = tiny_ld()
    model.model.diffusion_model = probe = RecordingUNet()
    model.model.conditioning_key = key
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    if key == "hybrid":
        model.apply_model(x, t, {"c_concat": [torch.zeros(2, 1, 8, 8)], "c_crossattn": cond})
        assert probe.calls[0]["x"].shape[1] == 5 and torch.equal(probe.calls[0]["context"], cond[0])
        return
    out = model.apply_model(x, t, cond)
    assert out.shape == (2, 4, 8, 8)
    if want == "c_concat":
        assert torch.equal(probe.calls[0]["x"], torch.cat([x, cond], 1))
    else:
        assert torch.equal(probe.calls[0]["context"], cond)


# --------------------------------------------------------------------------------------------
# Losses and sampling
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("learn_logvar", [False, True])
def test_p_losses_weights_by_logvar_and_adds_the_elbo_term(learn_logvar):
    model = tiny_ld(learn_logvar=learn_logvar, logvar_init=0.5 if learn_logvar else 0.0,
                    original_elbo_weight=0.1, l_simple_weight=3.0)
    model.model.diffusion_model = RecordingUNet()
    x0, noise, c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32)
    t = torch.tensor([10, 900])
    loss, logs = model.p_losses(x0, c, t, noise=noise)
    x_t = model.q_sample(x0, t, noise)
    per_sample = ((0.5 * x_t - noise) ** 2).mean(dim=(1, 2, 3))
    logvar = 0.5 if learn_logvar else 0.0
    weighted = per_sample / np.exp(logvar) + logvar
    vlb = (model.lvlb_weights[t] * per_sample).mean()
    torch.testing.assert_close(loss, 3.0 * weighted.mean() + 0.1 * vlb)
    torch.testing.assert_close(logs["train/loss_simple"], per_sample.mean())
    assert ("train/loss_gamma" in logs) == learn_logvar and ("logvar" in logs) == learn_logvar


def test_latent_p_losses_draws_the_offset_noise_of_noise_offset():
    model = tiny_ld(noise_offset=0.5)
    x0, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32), torch.tensor([10, 900])
    torch.manual_seed(3)
    loss, _ = model.p_losses(x0, c, t)
    torch.manual_seed(3)
    noise = torch.randn_like(x0) + 0.5 * torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(loss, model.p_losses(x0, c, t, noise=noise)[0])
    torch.manual_seed(3)
    without_offset = model.p_losses(x0, c, t, noise=torch.randn_like(x0))[0]
    assert not torch.allclose(loss, without_offset)


def test_v_models_can_sample_ancestrally():
    model = tiny_ld(parameterization="v")
    model.model.diffusion_model = RecordingUNet()
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.randn(2, 3, 32)
    mean, _, _, x0 = model.p_mean_variance(x, c, t, clip_denoised=False, return_x0=True)
    torch.testing.assert_close(x0, model.predict_start_from_z_and_v(x, t, 0.5 * x))
    torch.testing.assert_close(mean, model.q_posterior(x0, x, t)[0])


def test_ancestral_sampling_loops_return_latents_and_intermediates():
    model = tiny_ld(timesteps=6, log_every_t=3)
    cond = torch.randn(4, 3, 32)
    samples, inter = model.sample(cond, batch_size=2, return_intermediates=True, verbose=False)
    assert samples.shape == (2, 4, 8, 8) and len(inter) == 1 + 3  # x_T, then steps 5 (the first), 3, 0
    img, progressives = model.progressive_denoising(cond, shape=(4, 8, 8), batch_size=2, verbose=False)
    assert img.shape == (2, 4, 8, 8) and len(progressives) == 3
    x0 = torch.randn(2, 4, 8, 8)
    keep_all = model.sample(cond, batch_size=2, mask=torch.ones(2, 1, 8, 8), x0=x0, verbose=False)
    assert (keep_all - x0).abs().max() < 0.25  # q_sample(x0, 0) = 0.9996 x0 + 0.03 noise
    with pytest.raises(ValueError, match="x0"):
        model.sample(cond, batch_size=2, mask=torch.ones(2, 1, 8, 8), verbose=False)


def test_sample_log_uses_ddim_when_asked():
    model = tiny_ld()
    samples, intermediates = model.sample_log(torch.randn(2, 3, 32), batch_size=2, ddim=True, ddim_steps=4, eta=0.0)
    assert samples.shape == (2, 4, 8, 8) and "pred_x0" in intermediates


def test_sample_log_samples_through_the_registry_from_the_noise_of_seeds_0_to_n(monkeypatch):
    from ldm.models.diffusion import latent_sampling, samplers
    from ldm.models.diffusion.seeding import ImageNoise

    calls = []

    def recording_get_sampler(name, model):
        sampler = samplers.get_sampler(name, model)
        real_sample = sampler.sample

        def sample(*args, **kwargs):
            calls.append((name, kwargs["x_T"], kwargs["generator"]))
            return real_sample(*args, **kwargs)

        sampler.sample = sample
        return sampler

    monkeypatch.setattr(latent_sampling, "get_sampler", recording_get_sampler)
    model = tiny_ld()
    model.sample_log(torch.randn(3, 3, 32), batch_size=3, ddim=True, ddim_steps=2, eta=1.0)
    (name, x_T, generators), = calls
    assert name == "ddim" and len(generators) == 3
    assert torch.equal(x_T, ImageNoise([0, 1, 2], torch.device("cpu")).randn((4, 8, 8)))


@pytest.mark.parametrize("ddim_steps", [4, None])
def test_logged_samples_start_from_the_same_noise_every_time(ddim_steps):
    model = tiny_ld(timesteps=20, log_every_t=10)
    batch = tiny_latent_diffusion_batch(2)
    options = dict(N=2, ddim_steps=ddim_steps, ddim_eta=1.0, inpaint=False, plot_progressive_rows=False,
                   plot_diffusion_rows=False, unconditional_guidance_scale=1.0)
    torch.manual_seed(0)
    first = model.log_images(batch, **options)
    torch.manual_seed(1)
    second = model.log_images(batch, **options)
    if ddim_steps is None:  # the ancestral sampler's step noise comes from the global generator
        assert not torch.equal(first["samples"], second["samples"])
    else:
        assert torch.equal(first["samples"], second["samples"])


def test_log_images_returns_the_original_keys():
    model = tiny_ld(timesteps=4, log_every_t=2)
    batch = tiny_latent_diffusion_batch(2)
    log = model.log_images(batch, N=2, n_row=2, ddim_steps=None, plot_denoise_rows=True,
                           unconditional_guidance_scale=1.0)
    want = {"inputs", "reconstruction", "diffusion_row", "samples", "denoise_row", "samples_inpainting", "mask",
            "samples_outpainting", "progressive_row"}
    assert want <= set(log)
    assert log["samples"].shape == (2, 3, 16, 16) and log["diffusion_row"].dim() == 3
    assert set(model.log_images(batch, N=2, ddim_steps=None, return_keys=["samples"])) == {"samples"}


def test_to_rgb_projects_maps_to_three_channels_in_range():
    rgb = tiny_ld().to_rgb(torch.randn(2, 7, 5, 5))
    assert rgb.shape == (2, 3, 5, 5) and rgb.min() == -1 and rgb.max() == 1


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def test_scale_by_std_sets_the_factor_from_the_first_batch_only():
    model = tiny_ld(scale_by_std=True, scale_factor=1.0)
    assert "scale_factor" in model.state_dict()
    batch = tiny_latent_diffusion_batch(4)
    torch.manual_seed(11)
    model.on_train_batch_start(batch, 0)
    torch.manual_seed(11)
    z = model.first_stage_model.encode(batch["jpg"].permute(0, 3, 1, 2)).sample()
    torch.testing.assert_close(model.scale_factor, 1.0 / z.flatten().std())
    before = model.scale_factor.clone()
    model.on_train_batch_start(tiny_latent_diffusion_batch(4), 1)
    assert torch.equal(model.scale_factor, before)
    with pytest.raises(ValueError, match="scale_factor"):
        tiny_ld(scale_by_std=True, scale_factor=0.5).on_train_batch_start(batch, 0)


def test_configure_optimizers_adds_trainable_cond_stage_and_learned_logvar():
    model = tiny_ld(cond_stage_trainable=True, learn_logvar=True, scheduler_config=SCHEDULER)
    model.cond_stage_model = TextStub()
    model.learning_rate = 1e-4
    [opt], [sched] = model.configure_optimizers()
    params = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(model.cond_stage_model.scale) in params and id(model.logvar) in params
    assert {id(p) for p in model.model.parameters()} <= params
    assert sched["interval"] == "step"


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tiny_loader(n_items=6, batch_size=2):
    generator = torch.Generator().manual_seed(0)
    items = [{k: v[0] for k, v in tiny_latent_diffusion_batch(1, generator).items()} for _ in range(n_items)]
    return torch.utils.data.DataLoader(_ListDataset(items), batch_size=batch_size)


def quiet_trainer(**kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


@pytest.mark.filterwarnings("ignore:You called `self.log")
@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_lightning_trainer_trains_three_steps_updates_weights_ema_scale_and_logs_validation():
    model = tiny_ld(use_ema=True, scale_by_std=True, scale_factor=1.0)
    model.learning_rate = 1e-3
    loader = tiny_loader()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    first_stage_before = {k: v.clone() for k, v in model.first_stage_model.state_dict().items()}
    trainer = quiet_trainer(max_steps=3, limit_val_batches=1)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    after = model.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(v, model.first_stage_model.state_dict()[k]) for k, v in first_stage_before.items())
    assert int(model.model_ema.num_updates) == 3
    assert float(model.scale_factor) != 1.0 and 0.1 < float(model.scale_factor) < 100
    assert {"val/loss_simple", "val/loss_simple_ema", "train/loss"} <= set(trainer.callback_metrics)


@pytest.mark.filterwarnings("ignore:You called `self.log")
def test_validation_without_ema_still_reports_the_ema_metrics_configs_monitor():
    model = tiny_ld(use_ema=False)
    metrics = quiet_trainer(limit_val_batches=1).validate(model, dataloaders=tiny_loader(), verbose=False)[0]
    assert metrics["val/loss_simple_ema"] == metrics["val/loss_simple"]


def test_short_conditioning_schedule_noises_the_conditioning_in_forward():
    model = tiny_ld(num_timesteps_cond=3)
    model.model.diffusion_model = probe = RecordingUNet()
    c = torch.randn(2, 3, 32)
    model(torch.randn(2, 4, 8, 8), c)
    context = probe.calls[0]["context"]
    assert context.shape == c.shape and not torch.equal(context, c)
