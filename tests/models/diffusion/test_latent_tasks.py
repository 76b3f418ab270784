"""Task models of ldm/models/diffusion/latent_tasks.py (inpainting, depth, upscaling, unCLIP) and
the low-scale noise models of ldm/modules/diffusionmodules/upscaling.py."""
import importlib
import sys

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ldm.models.diffusion import latent_tasks
from ldm.models.diffusion.latent_tasks import normalized_depth
from ldm.modules.diffusionmodules.upscaling import (
    AbstractLowScaleModel,
    ImageConcatWithNoiseAugmentation,
    SimpleImageConcat,
)
from ldm.util import CheckpointError, get_obj_from_str, instantiate_from_config, load_state_dict_checked
from tests.manifests import MANIFEST_CONFIGS, REPO_ROOT, layout_of, read_manifest
from tests.models.diffusion.test_ddpm import reference_betas, reference_buffers
from tests.tiny_configs import (
    tiny_depth2img_config,
    tiny_inpainting_config,
    tiny_latent_diffusion_batch,
    tiny_latent_diffusion_config,
    tiny_unet_config,
    tiny_upscaler_config,
)

TASK_MODELS = ["LatentUpscaleDiffusion", "LatentFinetuneDiffusion", "LatentInpaintDiffusion",
               "LatentDepth2ImageDiffusion", "LatentUpscaleFinetuneDiffusion",
               "ImageEmbeddingConditionedLatentDiffusion"]


def build(config):
    return instantiate_from_config(config)


def unet_output_for(model, z, cond):
    """Run the real tiny UNet once: proves the concat width matches its in_channels."""
    out = model.apply_model(z, torch.tensor([10] * z.shape[0]), cond)
    assert out.shape == z.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", TASK_MODELS)
def test_task_models_are_importable_under_their_original_ddpm_path(name):
    assert get_obj_from_str(f"ldm.models.diffusion.ddpm.{name}") is getattr(latent_tasks, name)


def test_latent_tasks_can_be_imported_before_ddpm(monkeypatch):
    import ldm.models.diffusion as package

    for name in ("ddpm", "latent_tasks"):  # forget both modules for this test only
        monkeypatch.delitem(sys.modules, f"ldm.models.diffusion.{name}")
        monkeypatch.delattr(package, name)
    tasks = importlib.import_module("ldm.models.diffusion.latent_tasks")
    ddpm = importlib.import_module("ldm.models.diffusion.ddpm")
    assert ddpm.LatentInpaintDiffusion is tasks.LatentInpaintDiffusion


# --------------------------------------------------------------------------------------------
# Inpainting
# --------------------------------------------------------------------------------------------
def inpainting_batch(n=2):
    batch = tiny_latent_diffusion_batch(n)
    mask = torch.zeros(n, 16, 16, 1)
    mask[:, 4:12, 4:12] = 1
    batch["mask"] = mask
    batch["masked_image"] = batch["jpg"] * (1 - mask)
    return batch


def test_inpainting_concat_is_resized_mask_then_masked_image_latent_nine_channels_in_all():
    model = build(tiny_inpainting_config())
    batch = inpainting_batch()
    torch.manual_seed(5)
    z, cond = model.get_input(batch, "jpg")
    torch.manual_seed(5)
    model.encode_first_stage(batch["jpg"].permute(0, 3, 1, 2)).sample()  # the latent draws first
    masked = batch["masked_image"].permute(0, 3, 1, 2)
    masked_latent = 0.18215 * model.encode_first_stage(masked).sample()
    c_cat = cond["c_concat"][0]
    assert c_cat.shape == (2, 5, 8, 8)
    assert torch.equal(c_cat[:, :1], F.interpolate(batch["mask"].permute(0, 3, 1, 2), size=(8, 8)))
    torch.testing.assert_close(c_cat[:, 1:], masked_latent)
    assert torch.equal(cond["c_crossattn"][0], batch["txt"])
    unet_output_for(model, z, cond)
    loss, _ = model.shared_step(batch)
    assert torch.isfinite(loss)


def test_inpainting_needs_the_masked_image_among_concat_keys():
    with pytest.raises(ValueError, match="masked_image_key"):
        build(tiny_inpainting_config(concat_keys=["mask", "other"]))


def test_finetune_keys_widen_the_checkpoint_input_conv_with_zeros(tmp_path):
    source = build(tiny_latent_diffusion_config(use_ema=True))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "t2i.ckpt")
    model = build(tiny_inpainting_config(use_ema=True, finetune_keys=list(latent_tasks.DEFAULT_FINETUNE_KEYS),
                                         ckpt_path=str(tmp_path / "t2i.ckpt")))
    old = source.state_dict()["model.diffusion_model.input_blocks.0.0.weight"]
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model_ema.diffusion_modelinput_blocks00weight"):
        new = model.state_dict()[key]
        assert new.shape == (32, 9, 3, 3)
        assert torch.equal(new[:, :4], old) and torch.all(new[:, 4:] == 0), key
    with pytest.raises(ValueError, match="ckpt_path"):
        build(tiny_inpainting_config(finetune_keys=list(latent_tasks.DEFAULT_FINETUNE_KEYS)))


def test_finetuning_from_a_checkpoint_without_ema_can_restart_the_ema_from_its_weights(tmp_path):
    source = build(tiny_latent_diffusion_config(use_ema=False))
    with torch.no_grad():
        for parameter in source.model.parameters():
            parameter.add_(1.0)  # "trained": unlike any fresh initialisation
    torch.save({"state_dict": source.state_dict()}, tmp_path / "t2i.ckpt")
    config = tiny_inpainting_config(use_ema=True, finetune_keys=list(latent_tasks.DEFAULT_FINETUNE_KEYS),
                                    ckpt_path=str(tmp_path / "t2i.ckpt"))
    stale = build(config)
    model = build(OmegaConf.merge(config, {"params": {"reset_ema": True}}))
    key, shadow = "model.diffusion_model.out.2.weight", "model_ema.diffusion_modelout2weight"
    assert torch.equal(model.state_dict()[shadow], source.state_dict()[key])
    assert not torch.equal(stale.state_dict()[shadow], source.state_dict()[key])
    assert model.model_ema.num_updates.item() == 0


def test_inpainting_log_images_adds_the_masked_image():
    model = build(tiny_inpainting_config(timesteps=3))
    log = model.log_images(inpainting_batch(), N=2, ddim_steps=None, plot_progressive_rows=False)
    assert {"inputs", "reconstruction", "samples", "diffusion_row", "masked_image"} <= set(log)
    assert log["masked_image"].shape == (2, 3, 16, 16)


# --------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------
def reference_depth_channel(depth, size):
    d = F.interpolate(depth, size=size, mode="bicubic", align_corners=False)
    lo = d.flatten(1).min(dim=1).values.reshape(-1, 1, 1, 1)
    hi = d.flatten(1).max(dim=1).values.reshape(-1, 1, 1, 1)
    return 2 * (d - lo) / (hi - lo + 0.001) - 1


def test_depth_model_builds_midas_and_normalises_given_depth_maps():
    model = build(tiny_depth2img_config())
    assert type(model.depth_model).__name__ == "MiDaSInference" and not model.depth_model.model.training
    batch = tiny_latent_diffusion_batch(2)
    batch["depth"] = torch.rand(2, 16, 16) * 1000 + torch.tensor([0.0, 5000.0])[:, None, None]
    z, cond = model.get_input(batch, "jpg")
    c_cat = cond["c_concat"][0]
    assert c_cat.shape == (2, 1, 8, 8)
    torch.testing.assert_close(c_cat, reference_depth_channel(batch["depth"][:, None], (8, 8)))
    assert c_cat.min() >= -1 and c_cat.max() <= 1 and c_cat.amin(dim=(1, 2, 3)).allclose(torch.tensor(-1.0))
    unet_output_for(model, z, cond)
    for layout in (batch["depth"][:, None], batch["depth"][..., None]):
        torch.testing.assert_close(model.depth_to_concat(layout, (8, 8)), c_cat)


def test_depth_model_estimates_depth_from_midas_inputs_without_a_depth_key():
    model = build(tiny_depth2img_config())
    batch = tiny_latent_diffusion_batch(1)
    batch["midas_in"] = torch.rand(1, 3, 32, 32) * 2 - 1
    z, cond = model.get_input(batch, "jpg")
    expected = normalized_depth(model.depth_model(batch["midas_in"]), (8, 8))
    torch.testing.assert_close(cond["c_concat"][0], expected)
    with pytest.raises(ValueError, match="depth map"):
        model.depth_to_concat(torch.rand(1, 2, 4, 4), (8, 8))


def test_depth_of_images_prepares_them_as_addmidas_does():
    model = build(tiny_depth2img_config())
    images = torch.rand(2, 3, 48, 64) * 2 - 1
    prepared = model.depth_model.transform_images(images)
    torch.testing.assert_close(model.estimate_depth_of_images(images), model.depth_model(prepared))


def test_checked_loading_loads_the_depth_model_keys_strictly():
    model = build(tiny_depth2img_config())
    state = dict(model.state_dict())
    state["depth_model.model.scratch.output_conv.0.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="depth estimator"):
        load_state_dict_checked(model, state, strict=True)


def test_original_depth_config_builds_on_meta_with_the_manifest_layout():
    config = OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS["v2-midas-inference"])
    with torch.device("meta"):
        model = instantiate_from_config(config.model)
    assert layout_of(model) == read_manifest("v2-midas-inference")


def test_depth_log_images_shows_the_depth_map():
    model = build(tiny_depth2img_config(timesteps=3))
    batch = tiny_latent_diffusion_batch(2)
    batch["depth"] = torch.rand(2, 16, 16)
    log = model.log_images(batch, N=2, ddim_steps=None, plot_progressive_rows=False)
    assert log["depth"].shape == (2, 1, 16, 16) and log["depth"].min() == -1 and log["depth"].max() == 1


# --------------------------------------------------------------------------------------------
# Upscaling
# --------------------------------------------------------------------------------------------
def test_low_scale_model_buffers_follow_the_x4_manifest_and_the_closed_forms():
    config = {"linear_start": 0.0001, "linear_end": 0.02}
    model = ImageConcatWithNoiseAugmentation(noise_schedule_config=config, max_noise_level=350)
    assert layout_of(model) == read_manifest("x4-upscaling", prefix="low_scale_model.")
    expected = reference_buffers(reference_betas("linear", 1000, 0.0001, 0.02))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, torch.tensor(expected[name], dtype=torch.float32), rtol=2e-6, atol=0)


def test_noise_augmentation_noises_to_a_random_or_given_level():
    model = ImageConcatWithNoiseAugmentation({"linear_start": 0.0001, "linear_end": 0.02}, max_noise_level=350)
    x = torch.randn(500, 3, 2, 2)
    torch.manual_seed(1)
    z, level = model(x)
    assert level.dtype == torch.long and 0 <= level.min() and level.max() < 350 and level.max() > 300
    torch.manual_seed(1)
    torch.randint(0, 350, (500,))
    torch.testing.assert_close(z, model.q_sample(x, level, torch.randn_like(x)))
    fixed = torch.full((500,), 20)
    assert torch.equal(model(x, noise_level=fixed)[1], fixed)
    with pytest.raises(TypeError, match="noise_level"):
        model(x, noise_level=20)


def test_simple_and_abstract_low_scale_models_pass_images_through():
    x = torch.randn(3, 3, 4, 4)
    z, level = SimpleImageConcat()(x)
    assert torch.equal(z, x) and torch.equal(level, torch.zeros(3, dtype=torch.long))
    assert len(SimpleImageConcat().state_dict()) == 0
    abstract = AbstractLowScaleModel()
    assert abstract(x) == (x, None) and abstract.decode(x) is x


def test_upscaler_concat_is_the_noised_lr_image_and_its_level_is_the_class_label():
    model = build(tiny_upscaler_config())
    batch = tiny_latent_diffusion_batch(2)
    batch["lr"] = torch.rand(2, 8, 8, 3) * 2 - 1
    z, cond = model.get_input(batch, "jpg")
    assert set(cond) == {"c_concat", "c_crossattn", "c_adm"}
    assert cond["c_concat"][0].shape == (2, 3, 8, 8) and cond["c_adm"].shape == (2,)
    assert not model.low_scale_model.training and 0 <= cond["c_adm"].min() and cond["c_adm"].max() < 350
    unet_output_for(model, z, cond)
    outputs = model.get_input(batch, "jpg", log_mode=True)
    assert len(outputs) == 8 and torch.equal(outputs[5], batch["lr"].permute(0, 3, 1, 2))
    assert torch.isfinite(model.shared_step(batch)[0])


def test_upscaler_refuses_unsupported_options():
    with pytest.raises(ValueError, match="trainable"):
        build(tiny_upscaler_config(cond_stage_trainable=True))
    model = build(tiny_upscaler_config(noise_level_key="level"))
    with pytest.raises(NotImplementedError, match="noise_level_key"):
        model.get_input(tiny_latent_diffusion_batch(1), "jpg")


def record_sample_log(model, monkeypatch):
    """Replace ``model.sample_log`` by a recorder returning zero latents (no sampling)."""
    calls = []

    def sample_log(cond, batch_size, ddim, ddim_steps, **kwargs):
        calls.append(dict(cond=cond, batch_size=batch_size, ddim=ddim, ddim_steps=ddim_steps, **kwargs))
        return torch.zeros(batch_size, model.channels, model.image_size, model.image_size), []

    monkeypatch.setattr(model, "sample_log", sample_log)
    return calls


def test_upscaler_log_images_keeps_lr_and_level_in_the_unconditional_branch(monkeypatch):
    model = build(tiny_upscaler_config(timesteps=3))
    batch = tiny_latent_diffusion_batch(2)
    batch["lr"] = torch.rand(2, 8, 8, 3) * 2 - 1
    log = model.log_images(batch, N=2, ddim_steps=None, plot_progressive_rows=False)
    assert {"inputs", "x_lr", "samples"} <= set(log)
    assert any(key.startswith("x_lr_rec_@noise_levels") for key in log)
    assert not {"samples_inpainting", "samples_x0_quantized"} & set(log)  # as the original's
    calls = record_sample_log(model, monkeypatch)
    model.get_unconditional_conditioning = lambda n, label: torch.zeros(n, 3, 32)
    log = model.log_images(batch, N=2, unconditional_guidance_scale=3.0, plot_progressive_rows=False)
    assert "samples_cfg_scale_3.00" in log
    sampled, guided = calls
    assert (sampled["ddim_steps"], sampled["eta"]) == (200, 1.0)  # the original's defaults for this task
    cond, uc = guided["cond"], guided["unconditional_conditioning"]
    assert set(uc) == {"c_concat", "c_crossattn", "c_adm"}
    assert uc["c_concat"] is cond["c_concat"] and uc["c_adm"] is cond["c_adm"]
    assert torch.equal(uc["c_crossattn"][0], torch.zeros(2, 3, 32))


def upscale_finetune_config(**params):
    config = tiny_latent_diffusion_config(conditioning_key="hybrid",
                                          unet_config=tiny_unet_config(in_channels=4 + 12))
    config.target = "ldm.models.diffusion.ddpm.LatentUpscaleFinetuneDiffusion"
    return OmegaConf.merge(config, {"params": dict(finetune_keys=None, reshuffle_patch_size=2, **params)})


def test_upscale_finetune_pixel_unshuffles_the_lr_image_into_channels():
    model = build(upscale_finetune_config())
    batch = tiny_latent_diffusion_batch(2)
    batch["lr"] = torch.randn(2, 16, 16, 3)
    z, cond = model.get_input(batch, "jpg")
    c_cat = cond["c_concat"][0]
    assert c_cat.shape == (2, 12, 8, 8) and "c_adm" not in cond
    lr = batch["lr"].permute(0, 3, 1, 2)
    for p1 in range(2):
        for p2 in range(2):
            for c in range(3):
                assert torch.equal(c_cat[:, (p1 * 2 + p2) * 3 + c], lr[:, c, p1 * 8:(p1 + 1) * 8, p2 * 8:(p2 + 1) * 8])
    unet_output_for(model, z, cond)


def test_upscale_finetune_with_a_low_scale_model_adds_the_noise_level():
    low = {"target": "ldm.modules.diffusionmodules.upscaling.SimpleImageConcat"}
    model = build(upscale_finetune_config(low_scale_config=low, low_scale_key="lr"))
    batch = tiny_latent_diffusion_batch(2)
    batch["lr"] = torch.randn(2, 16, 16, 3)
    assert torch.equal(model.get_input(batch, "jpg")[1]["c_adm"], torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="low_scale_key"):
        build(upscale_finetune_config(low_scale_config=low))


# --------------------------------------------------------------------------------------------
# unCLIP
# --------------------------------------------------------------------------------------------
def unclip_config(**params):
    """unCLIP at toy size: the "image embedder" flattens a 16x16 image to 768 numbers, the noise
    augmentor appends a 768-wide noise-level embedding, so the UNet's y is 1536 wide."""
    unet = tiny_unet_config(num_classes="sequential", adm_in_channels=1536)
    config = tiny_latent_diffusion_config(conditioning_key="crossattn-adm", unet_config=unet)
    config.target = "ldm.models.diffusion.ddpm.ImageEmbeddingConditionedLatentDiffusion"
    noise_aug = {"target": "ldm.modules.encoders.modules.CLIPEmbeddingNoiseAugmentation",
                 "params": {"timestep_dim": 768,
                            "noise_schedule_config": {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}}}
    task = dict(embedder_config={"target": "torch.nn.Flatten"}, noise_aug_config=noise_aug,
                embedding_dropout=0.25, parameterization="v")
    task.update(params)
    return OmegaConf.merge(config, {"params": task})


def test_unclip_conditions_on_the_image_embedding_and_its_noise_level():
    model = build(unclip_config())
    model.eval()
    batch = tiny_latent_diffusion_batch(2)
    z, cond = model.get_input(batch, "jpg")
    assert set(cond) == {"c_crossattn", "c_adm"} and cond["c_adm"].shape == (2, 1536)
    assert not model.embedder.training and not model.noise_augmentor.training
    unet_output_for(model, z, cond)
    assert [k for k in model.state_dict() if k.startswith("noise_augmentor.")][0] == "noise_augmentor.betas"


def test_unclip_drops_whole_embeddings_in_training_only():
    model = build(unclip_config(embedding_dropout=1.0, noise_aug_config=None))
    model.train()
    batch = tiny_latent_diffusion_batch(3)
    assert torch.all(model.get_input(batch, "jpg")[1]["c_adm"] == 0)
    model.eval()
    c_adm = model.get_input(batch, "jpg")[1]["c_adm"]
    assert torch.equal(c_adm, batch["jpg"].permute(0, 3, 1, 2).flatten(1))


def test_unclip_log_images_logs_guided_samples_as_the_original(monkeypatch):
    model = build(unclip_config())
    model.eval()
    calls = record_sample_log(model, monkeypatch)
    model.get_unconditional_conditioning = lambda n, label: torch.full((n, 3, 32), float(len(label)))
    log = model.log_images(tiny_latent_diffusion_batch(2), N=2)
    assert set(log) == {"inputs", "reconstruction", "samplescfg_scale_5.00"}
    (guided,) = calls
    assert (guided["ddim"], guided["ddim_steps"], guided["eta"], guided["unconditional_guidance_scale"]) == (
        True, 50, 0.0, 5.0)
    uc = guided["unconditional_conditioning"]
    assert uc["c_adm"] is guided["cond"]["c_adm"] and torch.equal(uc["c_crossattn"][0], torch.zeros(2, 3, 32))


def test_unclip_embedder_is_frozen_unless_asked_not_to_be():
    frozen = build(unclip_config(noise_aug_config=None))
    assert "train" in vars(frozen.embedder)  # train() disabled on the instance
    unfrozen = build(unclip_config(freeze_embedder=False, noise_aug_config=None))
    assert "train" not in vars(unfrozen.embedder) and unfrozen.embedder.training
