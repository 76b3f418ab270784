"""ldm.util.load_model_from_config on a real (tiny) LatentDiffusion: the one loader every script uses."""
import pytest
import torch

from ldm.util import CheckpointError, instantiate_from_config, load_model_from_config, save_checkpoint
from tests.tiny_configs import tiny_latent_diffusion_config, tiny_unet_config


def _perturbed_model(config):
    model = instantiate_from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # zero-initialised output layers would make outputs 0
    return model.eval()


def _unet_output(model):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        return model.apply_model(x, t, c)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_round_trip_through_file_gives_identical_outputs(tmp_path, suffix):
    config = tiny_latent_diffusion_config()
    original = _perturbed_model(config)
    path = tmp_path / f"tiny{suffix}"
    save_checkpoint(original.state_dict(), path, metadata={"global_step": 3})
    loaded = load_model_from_config(config, str(path), device="cpu", verbose=False)
    assert not loaded.training
    assert torch.equal(_unet_output(original), _unet_output(loaded))
    with torch.no_grad():
        z = torch.randn(1, 4, 8, 8)
        assert torch.equal(original.decode_first_stage(z), loaded.decode_first_stage(z))


def test_checkpoint_of_another_architecture_names_the_component(tmp_path):
    wider = tiny_latent_diffusion_config(unet_config=tiny_unet_config(model_channels=64))
    save_checkpoint(instantiate_from_config(wider).state_dict(), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match=r"UNet \(model.diffusion_model\).*wrong shape"):
        load_model_from_config(tiny_latent_diffusion_config(), str(tmp_path / "wide.safetensors"),
                               device="cpu", verbose=False)


def test_ema_weights_of_a_full_checkpoint_can_be_selected(tmp_path):
    trained = _perturbed_model(tiny_latent_diffusion_config(use_ema=True))
    with torch.no_grad():
        for name, buffer in trained.model_ema.named_buffers():
            if buffer.dim() > 0:
                buffer.fill_(0.01)
    save_checkpoint(trained.state_dict(), tmp_path / "full.ckpt")
    inference = tiny_latent_diffusion_config()  # use_ema False, like the inference configs
    plain = load_model_from_config(inference, str(tmp_path / "full.ckpt"), device="cpu", verbose=False)
    ema = load_model_from_config(inference, str(tmp_path / "full.ckpt"), device="cpu", verbose=False, ema=True)
    weight = "diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(plain.model.state_dict()[weight], trained.model.state_dict()[weight])
    assert torch.all(ema.model.state_dict()[weight] == 0.01)


def test_ema_selection_also_works_with_a_training_config_that_keeps_the_ema(tmp_path):
    config = tiny_latent_diffusion_config(use_ema=True)
    trained = _perturbed_model(config)
    save_checkpoint(trained.state_dict(), tmp_path / "full.safetensors")
    model = load_model_from_config(config, str(tmp_path / "full.safetensors"), device="cpu",
                                   verbose=False, ema=True)
    weight = "diffusion_model.input_blocks.0.0.weight"
    shadow = trained.model_ema.state_dict()[weight.replace(".", "")]
    assert torch.equal(model.model.state_dict()[weight], shadow)
