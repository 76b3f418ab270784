"""Exporting a training run for checkpoints/: the inference config, half-precision weights with
the EMA UNet, a strict round trip, and the latent scale factor."""
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ldm.data.shapes import ShapesDataset
from ldm.evaluation.shipping import (
    SHIPPED_AUTOENCODER,
    export,
    inference_config,
    latent_scale_factor,
    shipped_state_dict,
)
from ldm.util import CheckpointError, instantiate_from_config, load_model_from_config, save_checkpoint
from tests.tiny_configs import tiny_latent_diffusion_config


def _trained_model(training):
    """The model of a training config, built without the checkpoints the config points at."""
    model = OmegaConf.merge(training.model, {"params": {"ckpt_path": None, "reset_ema": False}})
    model.params.first_stage_config.params.ckpt_path = None
    return instantiate_from_config(model)


def _training_config():
    model = tiny_latent_diffusion_config(use_ema=True, ckpt_path="logs/run/last.ckpt", ignore_keys=["x"],
                                         reset_ema=True, ucg_training={"txt": {"p": 0.1, "val": ""}})
    model.params.first_stage_config.params.ckpt_path = "checkpoints/ae.safetensors"
    return OmegaConf.create({"model": model, "data": {"target": "main.DataModuleFromConfig"},
                             "lightning": {"trainer": {"max_steps": 1}}})


def _shipped_autoencoder(trained, path):
    """The run's frozen autoencoder written as the shared first-stage file, in fp16 as shipped."""
    save_checkpoint({k: v.half() for k, v in trained.first_stage_model.state_dict().items()}, str(path))
    return str(path)


def test_inference_config_drops_training_settings_and_points_at_the_shared_autoencoder():
    config = inference_config(_training_config())
    params = config.model.params
    assert set(config) == {"model"}
    assert params.use_ema is False and "ckpt_path" not in params and "ignore_keys" not in params
    assert "ucg_training" not in params and "monitor" not in params and "reset_ema" not in params
    assert params.first_stage_config.params.ckpt_path == SHIPPED_AUTOENCODER


def test_autoencoder_loss_becomes_identity_and_finetune_keys_and_decoder_only_training_are_cleared():
    training = OmegaConf.create({"model": {"target": "x.Y", "params": {
        "lossconfig": {"target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": {"disc_start": 1}},
        "finetune_keys": ["a"], "train_decoder_only": True}}})
    params = inference_config(training).model.params
    assert params.lossconfig.target == "torch.nn.Identity" and params.finetune_keys is None
    assert "train_decoder_only" not in params


def test_shipped_weights_take_the_ema_unet_in_half_precision_keep_buffers_and_leave_out_the_autoencoder(
        tmp_path):
    training = _training_config()
    trained = _trained_model(training)
    with torch.no_grad():
        for p in trained.model_ema.buffers():
            if p.is_floating_point():
                p.add_(1.0)
    autoencoder = _shipped_autoencoder(trained, tmp_path / "ae.safetensors")
    shipped_model = instantiate_from_config(inference_config(training, autoencoder).model)
    weights = shipped_state_dict(trained.state_dict(), shipped_model)
    key = "model.diffusion_model.out.2.bias"
    shadow = trained.model_ema.state_dict()["diffusion_modelout2bias"]
    assert weights[key].dtype == torch.float16
    torch.testing.assert_close(weights[key].float(), shadow.half().float())
    assert weights["alphas_cumprod"].dtype == torch.float32
    assert set(weights) == {k for k in shipped_model.state_dict() if not k.startswith("first_stage_model.")}


def test_export_writes_files_that_load_strictly(tmp_path):
    training = _training_config()
    trained = _trained_model(training)
    run_checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": trained.state_dict(), "global_step": 7}, run_checkpoint)
    autoencoder = _shipped_autoencoder(trained, tmp_path / "ae.safetensors")
    config_path, weights_path = export(training, str(run_checkpoint), str(tmp_path / "out" / "model"), "# header\n",
                                       autoencoder=autoencoder)
    assert open(config_path).read().startswith("# header\n")
    assert not any(k.startswith(("model_ema.", "first_stage_model.")) for k in load_file(weights_path))
    model = load_model_from_config(OmegaConf.load(config_path), weights_path, device="cpu", verbose=False,
                                   strict=True)
    assert not model.use_ema
    weight = "encoder.conv_in.weight"
    assert torch.equal(model.first_stage_model.state_dict()[weight],
                       trained.first_stage_model.state_dict()[weight].half().float())


def test_a_diffusion_checkpoint_without_its_autoencoder_needs_the_autoencoder_file(tmp_path):
    training = _training_config()
    trained = _trained_model(training)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "last.ckpt")
    autoencoder = _shipped_autoencoder(trained, tmp_path / "ae.safetensors")
    config_path, weights_path = export(training, str(tmp_path / "last.ckpt"), str(tmp_path / "model"),
                                       autoencoder=autoencoder)
    (tmp_path / "ae.safetensors").unlink()
    with pytest.warns(UserWarning, match="not found"), pytest.raises(CheckpointError, match="missing"):
        load_model_from_config(OmegaConf.load(config_path), weights_path, device="cpu", verbose=False)


def _shared_autoencoder_changed_in(trained, training, tmp_path, part):
    other = _trained_model(training)
    other.load_state_dict(trained.state_dict())
    with torch.no_grad():
        next(getattr(other.first_stage_model, part).parameters()).add_(1.0)
    return _shipped_autoencoder(other, tmp_path / "ae.safetensors")


def test_export_refuses_a_run_whose_autoencoder_encodes_differently_from_the_shared_one(tmp_path):
    training = _training_config()
    trained = _trained_model(training)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "last.ckpt")
    autoencoder = _shared_autoencoder_changed_in(trained, training, tmp_path, "encoder")
    with pytest.raises(ValueError, match="autoencoder encodes differently from"):
        export(training, str(tmp_path / "last.ckpt"), str(tmp_path / "model"), autoencoder=autoencoder)


def test_export_accepts_a_shared_autoencoder_whose_decoder_was_fine_tuned_since(tmp_path):
    training = _training_config()
    trained = _trained_model(training)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "last.ckpt")
    autoencoder = _shared_autoencoder_changed_in(trained, training, tmp_path, "decoder")
    config_path, weights_path = export(training, str(tmp_path / "last.ckpt"), str(tmp_path / "model"),
                                       autoencoder=autoencoder)
    model = load_model_from_config(OmegaConf.load(config_path), weights_path, device="cpu", verbose=False)
    fine_tuned = (next(trained.first_stage_model.decoder.parameters()) + 1.0).half().float()
    assert torch.equal(next(model.first_stage_model.decoder.parameters()), fine_tuned)


def test_export_refuses_a_checkpoint_that_lacks_model_tensors(tmp_path):
    run_checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"betas": torch.zeros(1000)}}, run_checkpoint)
    with pytest.raises(KeyError, match="lacks"), pytest.warns(UserWarning, match="not found"):
        export(_training_config(), str(run_checkpoint), str(tmp_path / "model"),
               autoencoder=str(tmp_path / "absent.safetensors"))


def test_latent_scale_factor_is_one_over_the_latent_std():
    class ScaledIdentity(torch.nn.Module):
        def encode(self, x):
            from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
            return DiagonalGaussianDistribution(torch.cat([4.0 * x, torch.full_like(x, -30.0)], dim=1))

    images = torch.stack([torch.from_numpy(ShapesDataset(length=16)[i]["image"]) for i in range(16)])
    assert latent_scale_factor(ScaledIdentity(), count=16) == pytest.approx(float(1.0 / (4.0 * images.std())), rel=1e-3)
