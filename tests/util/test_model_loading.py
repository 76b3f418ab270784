"""ldm/util/model_loading.py: a checkpoint is compared with the model's layout, built on the meta
device, before the real model is built (issue 18), keeping EMA selection, preloaded first stages,
legacy keys and the benign position_ids; a config the user did not name builds only model classes."""
import time

import pytest
import torch
from omegaconf import OmegaConf

import ldm.util.model_loading as model_loading
from ldm.util import (
    CheckpointError,
    CheckpointMismatchError,
    UntrustedConfigError,
    fit_state_dict,
    instantiate_from_config,
    load_model_from_config,
    save_checkpoint,
)
from tests.tiny_configs import tiny_autoencoder_config, tiny_latent_diffusion_config, tiny_unet_config


@pytest.fixture()
def builds(monkeypatch):
    """The device each model construction of load_model_from_config happens on, in order."""
    devices = []
    real = model_loading.instantiate_from_config

    def recording(config):
        devices.append(torch.empty(0).device.type)
        return real(config)

    monkeypatch.setattr(model_loading, "instantiate_from_config", recording)
    return devices


def _saved(config, path):
    save_checkpoint(instantiate_from_config(config).state_dict(), path)
    return str(path)


def test_a_checkpoint_that_does_not_fit_is_found_before_the_model_is_built(tmp_path, builds):
    wide = _saved(tiny_latent_diffusion_config(unet_config=tiny_unet_config(model_channels=64)),
                  tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"UNet \(model.diffusion_model\).*wrong shape") as err:
        load_model_from_config(tiny_latent_diffusion_config(), wide, device="cpu", verbose=False)
    assert builds == ["meta"], "the real model was built before the layouts were compared"
    assert "\n" not in str(err.value)


def test_a_checkpoint_that_fits_is_built_once_for_real_after_the_layout_check(tmp_path, builds):
    config = tiny_latent_diffusion_config()
    model = load_model_from_config(config, _saved(config, tmp_path / "m.ckpt"), device="cpu", verbose=False)
    assert builds == ["meta", "cpu"]
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_the_layout_check_names_non_float_weights_before_building(tmp_path, builds):
    config = tiny_latent_diffusion_config()
    state_dict = instantiate_from_config(config).state_dict()
    state_dict["model.diffusion_model.out.2.weight"] = state_dict["model.diffusion_model.out.2.weight"].to(torch.int8)
    save_checkpoint(state_dict, tmp_path / "int8.safetensors")
    with pytest.raises(CheckpointMismatchError, match="non-float type .*out.2.weight int8"):
        load_model_from_config(config, str(tmp_path / "int8.safetensors"), device="cpu", verbose=False)
    assert builds == ["meta"]


def test_the_sd1_config_with_the_shapes_checkpoint_fails_in_seconds_without_building_sd1(builds):
    import ldm.models.diffusion.latent_diffusion  # noqa: F401  (imports are not what is measured)
    import ldm.modules.encoders.modules  # noqa: F401

    config = OmegaConf.load("configs/stable-diffusion/v1-inference.yaml")
    start = time.perf_counter()
    with pytest.raises(CheckpointMismatchError, match=r"UNet \(model.diffusion_model\): \d+ tensors missing"):
        load_model_from_config(config, "checkpoints/shapes-txt2img.safetensors", device="cpu", verbose=False)
    assert builds == ["meta"]
    assert time.perf_counter() - start < 10  # 1.0 s measured on 2 cores; building SD 1.x took 26 s


def test_a_model_that_cannot_be_built_on_the_meta_device_is_still_loaded(tmp_path, builds, monkeypatch):
    config = tiny_latent_diffusion_config()
    path = _saved(config, tmp_path / "m.safetensors")
    real = model_loading.instantiate_from_config

    def no_meta(node):
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("Cannot copy out of meta tensor")
        return real(node)

    monkeypatch.setattr("ldm.util.model_loading.instantiate_from_config", no_meta)
    assert load_model_from_config(config, path, device="cpu", verbose=False) is not None


def test_a_preloaded_first_stage_may_be_absent_from_the_checkpoint(tmp_path):
    autoencoder = instantiate_from_config(tiny_autoencoder_config())
    with torch.no_grad():
        for parameter in autoencoder.parameters():
            parameter.normal_()
    save_checkpoint(autoencoder.state_dict(), tmp_path / "ae.safetensors")
    config = tiny_latent_diffusion_config(first_stage_config=tiny_autoencoder_config(
        ckpt_path=str(tmp_path / "ae.safetensors")))
    unet_only = {k: v for k, v in instantiate_from_config(tiny_latent_diffusion_config()).state_dict().items()
                 if not k.startswith("first_stage_model.")}
    save_checkpoint(unet_only, tmp_path / "unet.safetensors")
    model = load_model_from_config(config, str(tmp_path / "unet.safetensors"), device="cpu", verbose=False)
    for key, value in autoencoder.state_dict().items():
        assert torch.equal(model.first_stage_model.state_dict()[key], value)


def test_ema_weights_are_selected_on_the_layout_check_too(tmp_path, builds):
    trained = instantiate_from_config(tiny_latent_diffusion_config(use_ema=True))
    save_checkpoint(trained.state_dict(), tmp_path / "full.ckpt")
    inference = tiny_latent_diffusion_config()
    model = load_model_from_config(inference, str(tmp_path / "full.ckpt"), device="cpu", verbose=False, ema=True)
    assert builds == ["meta", "cpu"] and not hasattr(model, "model_ema")
    plain_only = {k: v for k, v in trained.state_dict().items() if not k.startswith("model_ema.")}
    save_checkpoint(plain_only, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model_from_config(inference, str(tmp_path / "plain.ckpt"), device="cpu", verbose=False, ema=True)


class _WithClip(torch.nn.Module):
    """``cond_stage_model.transformer.text_model``: the original layout of FrozenCLIPEmbedder."""

    def __init__(self):
        super().__init__()
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.transformer = torch.nn.Module()
        self.cond_stage_model.transformer.text_model = torch.nn.Linear(2, 2)


def test_legacy_clip_keys_and_old_position_ids_fit_a_model_on_the_meta_device():
    with torch.device("meta"):
        skeleton = _WithClip()
    new_style = {"cond_stage_model.transformer.weight": torch.ones(2, 2),
                 "cond_stage_model.transformer.bias": torch.zeros(2),
                 "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    state_dict, report = fit_state_dict(skeleton, new_style)
    assert report.ok and "cond_stage_model.transformer.text_model.weight" in state_dict


def test_an_untrusted_config_builds_model_classes_only(tmp_path):
    config = tiny_latent_diffusion_config()
    path = _saved(config, tmp_path / "m.safetensors")
    assert load_model_from_config(config, path, device="cpu", verbose=False, untrusted_source="x.yaml") is not None
    config.params.cond_stage_config = {"target": "os.system", "params": {"command": "true"}}
    with pytest.raises(UntrustedConfigError, match="^x.yaml names os.system, which is not a model class"):
        load_model_from_config(config, path, device="cpu", verbose=False, untrusted_source="x.yaml")
