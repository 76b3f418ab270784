import hashlib
from pathlib import Path

import pytest
import torch

from ldm.inference.errors import UsageError
from ldm.inference.loading import (
    choose_model_paths,
    config_for_checkpoint,
    config_hint,
    default_model_paths,
    inference_config,
    model_hash,
    read_config,
    read_model_spec,
)
from ldm.util import REPOSITORY_ROOT, save_checkpoint

REPO_ROOT = Path(REPOSITORY_ROOT)

SD = "configs/stable-diffusion"


def _spec(name):
    return read_model_spec(read_config(f"{SD}/{name}"))


@pytest.mark.parametrize("name, kind, size", [
    ("v1-inference.yaml", "text", 512),
    ("v2-inference.yaml", "text", 512),
    ("v2-inference-v.yaml", "text", 768),
    ("v2-inpainting-inference.yaml", "inpaint", 512),
    ("v2-midas-inference.yaml", "depth", 512),
])
def test_spec_reads_kind_and_training_size_from_original_configs(name, kind, size):
    spec = _spec(name)
    assert (spec.kind, spec.default_pixel_size, spec.pixel_multiple) == (kind, size, 64)


def test_upscaler_spec_has_its_noise_levels_and_f4_autoencoder():
    spec = _spec("x4-upscaling.yaml")
    assert (spec.kind, spec.vae_factor, spec.latent_multiple, spec.max_noise_level) == ("upscale", 4, 8, 350)


def test_default_configs_exist_and_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for task in ("txt2img", "img2img", "inpaint", "depth2img", "upscale"):
        config_path, _ = default_model_paths(task)
        assert (REPO_ROOT / config_path).is_file()
        read_config(config_path)


def test_missing_and_malformed_configs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--config: file not found"):
        read_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="--config: cannot read"):
        read_config(str(bad))
    no_model = tmp_path / "no_model.yaml"
    no_model.write_text("data: {}\n")
    with pytest.raises(UsageError, match="has no model section"):
        read_config(str(no_model))


def test_fp16_unet_switch_is_turned_off_without_touching_the_original():
    config = read_config(f"{SD}/v2-inference.yaml")
    unet = config.model.params.unet_config.params
    assert inference_config(config, fp16_unet=True, ema=None).model.params.unet_config.params.use_fp16
    assert not inference_config(config, fp16_unet=False, ema=None).model.params.unet_config.params.use_fp16
    assert unet.use_fp16 is True


@pytest.mark.parametrize("ema, keeps_copy", [(None, True), (True, False), (False, False)])
def test_an_explicit_ema_choice_drops_the_models_own_ema_copy(ema, keeps_copy):
    config = read_config(f"{SD}/v1-inference.yaml")
    config.model.params.use_ema = True
    assert inference_config(config, fp16_unet=False, ema=ema).model.params.use_ema is keeps_copy
    assert config.model.params.use_ema is True


def _fake_unet_checkpoint(path, in_channels, context_dim):
    save_checkpoint({
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, in_channels, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, context_dim),
    }, str(path))
    return str(path)


def test_hint_names_the_config_of_a_task_checkpoint(tmp_path):
    ckpt = _fake_unet_checkpoint(tmp_path / "inpaint.safetensors", 9, 1024)
    assert "v2-inpainting-inference.yaml" in config_hint(ckpt, _spec("v2-inference.yaml"))


def test_hint_tells_sd1_from_sd2_and_offers_v_and_eps_configs(tmp_path):
    sd1 = _fake_unet_checkpoint(tmp_path / "sd1.ckpt", 4, 768)
    sd2 = _fake_unet_checkpoint(tmp_path / "sd2.ckpt", 4, 1024)
    assert "v1-inference.yaml" in config_hint(sd1, _spec("v2-inference.yaml"))
    hint = config_hint(sd2, _spec("v1-inference.yaml"))
    assert "v2-inference-v.yaml" in hint and "v2-inference.yaml" in hint


def test_model_hash_is_the_sha256_prefix_of_the_file(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"weights")
    assert model_hash(str(path)) == hashlib.sha256(b"weights").hexdigest()[:10]


def test_warns_when_the_file_name_says_v_model_but_the_config_is_eps(capsys):
    from ldm.inference.loading import warn_if_parameterization_looks_wrong

    eps, v = _spec("v2-inference.yaml"), _spec("v2-inference-v.yaml")
    warn_if_parameterization_looks_wrong("ckpts/v2-1_768-ema-pruned.ckpt", "v2-inference.yaml", eps)
    assert "use --config configs/stable-diffusion/v2-inference-v.yaml" in capsys.readouterr().err
    warn_if_parameterization_looks_wrong("ckpts/v2-1_512-ema-pruned.ckpt", "v2-inference-v.yaml", v)
    assert "use --config configs/stable-diffusion/v2-inference.yaml" in capsys.readouterr().err
    for name, spec in (("v2-1_768-ema-pruned.ckpt", v), ("v2-1_512-ema-pruned.ckpt", eps),
                       ("v1-5-pruned-emaonly.ckpt", _spec("v1-inference.yaml"))):
        warn_if_parameterization_looks_wrong(name, "config.yaml", spec)
    assert capsys.readouterr().err == ""


def _unet_layout_checkpoint(path, in_channels, context_dim):
    """A file with just the two tensors the config guess reads: the UNet's first convolution and
    one cross-attention key projection."""
    save_checkpoint({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, in_channels, 3, 3),
                     "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         torch.zeros(8, context_dim)}, str(path))
    return str(path)


def test_no_model_flags_mean_the_shipped_shapes_model_of_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for task, name in [("txt2img", "shapes-txt2img"), ("img2img", "shapes-txt2img"),
                       ("inpaint", "shapes-inpainting"), ("depth2img", "shapes-depth"),
                       ("upscale", "shapes-x4-upscaler")]:
        config, ckpt, _ = choose_model_paths(task, None, None)
        assert config == str(REPO_ROOT / "checkpoints" / f"{name}.yaml")
        assert ckpt == str(REPO_ROOT / "checkpoints" / f"{name}.safetensors")


def test_a_config_without_checkpoint_is_refused_unless_it_is_the_default():
    with pytest.raises(UsageError, match="no checkpoint given: pass --ckpt"):
        choose_model_paths("txt2img", f"{SD}/v1-inference.yaml", None)
    config, ckpt, _ = choose_model_paths("txt2img", "checkpoints/shapes-txt2img.yaml", None)
    assert Path(ckpt).resolve() == REPO_ROOT / "checkpoints" / "shapes-txt2img.safetensors"


def test_a_checkpoint_alone_uses_the_config_beside_it(tmp_path, capsys):
    ckpt = _unet_layout_checkpoint(tmp_path / "mine.safetensors", 4, 768)
    (tmp_path / "mine.yaml").write_text("model: {target: x}\n")
    assert choose_model_paths("txt2img", None, ckpt) == (str(tmp_path / "mine.yaml"), ckpt, False)
    assert "--config not given: using" in capsys.readouterr().err


@pytest.mark.parametrize("name, in_channels, context_dim, config", [
    ("sd-v1-4.ckpt", 4, 768, "v1-inference.yaml"),
    ("v2-1_512-ema-pruned.ckpt", 4, 1024, "v2-inference.yaml"),
    ("v2-1_768-ema-pruned.ckpt", 4, 1024, "v2-inference-v.yaml"),
    ("512-inpainting-ema.ckpt", 9, 1024, "v2-inpainting-inference.yaml"),
    ("512-depth-ema.ckpt", 5, 1024, "v2-midas-inference.yaml"),
    ("x4-upscaler-ema.ckpt", 7, 1024, "x4-upscaling.yaml"),
])
def test_a_checkpoint_alone_gets_the_original_config_its_layout_fits(tmp_path, name, in_channels,
                                                                   context_dim, config):
    ckpt = _unet_layout_checkpoint(tmp_path / name, in_channels, context_dim)
    assert config_for_checkpoint(ckpt) == (f"{SD}/{config}", ckpt, True)  # a shipped config: trusted


def test_a_checkpoint_of_unknown_layout_asks_for_a_config(tmp_path):
    ckpt = _unet_layout_checkpoint(tmp_path / "odd.ckpt", 6, 512)
    with pytest.raises(UsageError, match="cannot tell which config fits .*odd.ckpt: pass --config"):
        config_for_checkpoint(ckpt)
    with pytest.raises(UsageError, match="--ckpt: file not found"):
        config_for_checkpoint(str(tmp_path / "missing.ckpt"))


@pytest.mark.parametrize("variant, embedding", [("l", 768), ("h", 1024)])
def test_unclip_configs_read_as_unclip_and_their_checkpoints_get_them_alone(tmp_path, variant, embedding):
    spec = _spec(f"v2-1-stable-unclip-{variant}-inference.yaml")
    assert (spec.kind, spec.default_pixel_size, spec.max_noise_level) == ("unclip", 768, 1000)
    ckpt = str(tmp_path / f"sd21-unclip-{variant}.ckpt")
    save_checkpoint({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
                     "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         torch.zeros(8, 1024),
                     "embedder.model.visual.proj": torch.zeros(embedding + 256, embedding)}, ckpt)
    config = f"{SD}/v2-1-stable-unclip-{variant}-inference.yaml"
    assert config_for_checkpoint(ckpt) == (config, ckpt, True)
    assert config_hint(ckpt, _spec("v2-inference.yaml")) == f"It is an unCLIP model: use scripts/unclip.py with " \
                                                            f"--config {config}"


LDM_SR = "configs/latent-diffusion/bsr_sr.yaml"


def test_the_ldm_bsr_config_is_a_super_resolution_model_of_64_pixel_low_res_crops():
    spec = read_model_spec(read_config(LDM_SR))
    assert (spec.kind, spec.conditioning_key, spec.cond_stage_key) == ("superres", "concat", "LR_image")
    assert (spec.vae_factor, spec.latent_multiple, spec.channels, spec.default_pixel_size) == (4, 8, 3, 256)


@pytest.mark.parametrize("name", ["celebahq-ldm-vq-4.yaml", "cin-ldm-vq-f8.yaml", "txt2img-1p4B-eval.yaml"])
def test_other_latent_diffusion_configs_are_not_super_resolution(name):
    assert read_model_spec(read_config(f"configs/latent-diffusion/{name}")).kind != "superres"


def test_concat_conditioning_on_low_res_images_is_super_resolution_by_concat_mode_or_conditioning_key():
    config = read_config(LDM_SR)
    del config.model.params["concat_mode"]  # LatentDiffusion's concat_mode defaults to True
    assert read_model_spec(config).kind == "superres"
    config.model.params.concat_mode = False
    assert read_model_spec(config).kind == "text"
    config.model.params.conditioning_key = "concat"
    assert read_model_spec(config).kind == "superres"


def test_a_six_channel_checkpoint_without_cross_attention_alone_gets_the_ldm_bsr_config(tmp_path):
    path = str(tmp_path / "model.ckpt")
    save_checkpoint({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 6, 3, 3)}, path)
    assert config_for_checkpoint(path) == (LDM_SR, path, True)
    assert LDM_SR in config_hint(path, _spec("x4-upscaling.yaml"))


@pytest.mark.parametrize("config, kind, n_classes, size", [
    ("configs/latent-diffusion/celebahq-ldm-vq-4.yaml", "unconditional", None, 256),
    ("configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml", "unconditional", None, 256),
    ("configs/shapes/pixel-ddpm.yaml", "unconditional", None, 32),
    ("configs/latent-diffusion/cin256-v2.yaml", "class", 1001, 256),
    ("configs/latent-diffusion/cin-ldm-vq-f8.yaml", "class", 1000, 256),
    ("configs/shapes/class-conditional.yaml", "class", 25, 64),
    ("configs/latent-diffusion/txt2img-1p4B-eval.yaml", "text", None, 256),
])
def test_spec_tells_unconditional_and_class_conditional_models_from_text_models(config, kind, n_classes, size):
    spec = read_model_spec(read_config(config))
    assert (spec.kind, spec.n_classes, spec.default_pixel_size, spec.timesteps) == (kind, n_classes, size, 1000)


def test_the_sampling_tasks_default_to_the_shipped_shapes_models():
    assert default_model_paths("unconditional") == ("checkpoints/shapes-pixel-ddpm.yaml",
                                                    "checkpoints/shapes-pixel-ddpm.safetensors")
    assert default_model_paths("class") == ("checkpoints/shapes-class-conditional.yaml",
                                            "checkpoints/shapes-class-conditional.safetensors")
