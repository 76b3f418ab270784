"""Training the real models through main.py's run (in-process, CPU, tiny sizes): the autoencoder
with its GAN loss, a text-conditional LDM, an overfit check, and an original training config."""
import os

import pytest
import torch

from ldm.modules.losses import lpips as lpips_module
from ldm.training.run import run
from tests.training.train_helpers import make_image_folder, make_tiny_clip, tiny_txt2img_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPERS = "tests.training.train_helpers"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=4, size=16)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _common(tmp_path, images, max_steps):
    return ["-t", "-l", str(tmp_path / "logs"), "--accelerator", "cpu", "--max_steps", str(max_steps),
            f"data.params.train.params.root={images}", "data.params.num_workers=0", "data.params.batch_size=2",
            "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false"]


def _record(tmp_path):
    path = tmp_path / "start.pt"
    return path, [f"lightning.callbacks.record.target={HELPERS}.RecordTrainStart",
                  f"lightning.callbacks.record.params.path={path}"]


def _changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_autoencoder_kl_trains_with_lpips_discriminator_loss(tmp_path, images, monkeypatch):
    monkeypatch.delenv("LDM_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setattr(lpips_module, "_warned_without_lpips", False)
    record, record_args = _record(tmp_path)
    args = ["--base", os.path.join(REPO, "configs/examples/tiny-autoencoder-kl.yaml"),
            os.path.join(REPO, "configs/examples/image-folder.yaml")] + \
        _common(tmp_path, images, max_steps=4) + record_args + [
            "model.params.lossconfig.params.disc_start=1", "lightning.trainer.accumulate_grad_batches=2",
            "lightning.callbacks.image_logger.params.batch_frequency=2"]
    with pytest.warns(UserWarning, match="training WITHOUT the perceptual loss"):
        result = run(args)
    model, start = result.model, torch.load(record, weights_only=True)
    assert model.loss.perceptual_weight == 0.0 and model.loss.perceptual_loss is None
    assert model.accumulate_grad_batches == 2 and result.trainer.accumulate_grad_batches == 1
    assert model.learning_rate == pytest.approx(2 * 2 * 1e-4)
    after = model.state_dict()
    assert _changed(start["state_dict"], after, "encoder.") and _changed(start["state_dict"], after, "decoder.")
    assert _changed(start["state_dict"], after, "loss.discriminator.")
    assert result.trainer.global_step == 4  # two autoencoder + two discriminator steps
    images_dir = os.path.join(result.paths.logdir, "images", "train")
    assert {f.split("_gs-")[0] for f in os.listdir(images_dir)} >= {"inputs", "reconstructions", "samples"}
    last = torch.load(os.path.join(result.paths.ckptdir, "last.ckpt"), weights_only=True)
    assert len(last["optimizer_states"]) == 2 and "loss.logvar" in last["state_dict"]


def test_text_conditional_ldm_trains_unet_text_encoder_and_ema(tmp_path, images, tiny_clip):
    record, record_args = _record(tmp_path)
    args = tiny_txt2img_args(tiny_clip) + _common(tmp_path, images, max_steps=3) + record_args + [
        "lightning.callbacks.image_logger.params.batch_frequency=2",
        "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2",
        "lightning.callbacks.image_logger.params.log_images_kwargs.N=2"]
    result = run(args)
    model, start = result.model, torch.load(record, weights_only=True)["state_dict"]
    after = model.state_dict()
    assert _changed(start, after, "model.diffusion_model.")
    assert _changed(start, after, "cond_stage_model.transformer.")
    assert not _changed(start, after, "first_stage_model.")
    assert model.model_ema.num_updates.item() == 3
    assert float(model.scale_factor) != 1.0  # scale_by_std set it from the first batch
    logged = os.listdir(os.path.join(result.paths.logdir, "images", "train"))
    assert any(f.startswith("samples_gs-000002") for f in logged)


def test_ldm_loss_goes_down_on_a_fixed_batch(tmp_path, tiny_clip):
    two = make_image_folder(tmp_path / "two", count=2, size=16)
    args = tiny_txt2img_args(tiny_clip) + _common(tmp_path, two, max_steps=50) + [
        "--scale_lr", "false", "model.base_learning_rate=2e-3", "model.params.scheduler_config=null",
        "model.params.ucg_training=null", "lightning.callbacks.image_logger.params.disabled=true",
        f"lightning.callbacks.fixed.target={HELPERS}.FixedBatchLoss"]
    result = run(args)
    probe = next(c for c in result.trainer.callbacks if type(c).__name__ == "FixedBatchLoss")
    assert probe.after < 0.7 * probe.before, (probe.before, probe.after)


def test_original_lsun_churches_config_runs_one_step_on_an_image_folder(tmp_path, images):
    unet, ae = "model.params.unet_config.params", "model.params.first_stage_config.params"
    shrink = [f"{unet}.model_channels=32", f"{unet}.channel_mult=[1,2]", f"{unet}.attention_resolutions=[2]",
              f"{unet}.num_res_blocks=1", f"{unet}.num_heads=2", f"{unet}.image_size=8", "model.params.image_size=8",
              f"{ae}.ckpt_path=null", f"{ae}.ddconfig.ch=32", f"{ae}.ddconfig.ch_mult=[1,2]",
              f"{ae}.ddconfig.num_res_blocks=1", f"{ae}.ddconfig.resolution=16"]
    data = ["data.params.train.target=ldm.data.image_folder.CaptionedImageFolder", "data.params.train.params.size=16",
            "data.params.validation=null"]
    args = ["--base", os.path.join(REPO, "configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml")] + \
        _common(tmp_path, images, max_steps=1) + shrink + data
    result = run(args)
    assert result.trainer.global_step == 1
    assert type(result.model).__name__ == "LatentDiffusion" and result.model.use_scheduler
    assert float(result.model.scale_factor) != 1.0  # the config's scale_by_std
    assert os.path.isfile(os.path.join(result.paths.ckptdir, "last.ckpt"))
