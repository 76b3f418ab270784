"""First-stage autoencoders: original layouts and configs, numerical equivalence with diffusers'
AutoencoderKL, posterior, manual-optimization training, EMA, tiling, VQ interface."""
import glob
import os

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage, VQModel, VQModelInterface, tiling
from ldm.util import instantiate_from_config, save_checkpoint
from tests.manifests import MANIFEST_CONFIGS, REPO_ROOT, layout_of, read_manifest

IDENTITY = {"target": "torch.nn.Identity"}
TINY_DD = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
               num_res_blocks=1, attn_resolutions=[], dropout=0.0)
LPIPS_TARGET = "ldm.modules.losses.LPIPSWithDiscriminator"

pytestmark = [pytest.mark.filterwarnings("ignore:.*but have no logger configured"),
              pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`")]


def _tiny_kl(lossconfig=IDENTITY, **kwargs) -> AutoencoderKL:
    return AutoencoderKL(ddconfig=dict(TINY_DD), lossconfig=lossconfig, embed_dim=4, **kwargs)


def _perturb(module: nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


# ---------------------------------------------------------------------------------------------
# Layouts and configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MANIFEST_CONFIGS))
def test_first_stage_of_each_original_config_has_the_manifest_layout(name):
    config = OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS[name]).model.params.first_stage_config
    with torch.device("meta"):
        model = instantiate_from_config(config)
    assert layout_of(model) == read_manifest(name, prefix="first_stage_model.")


def _model_config_with_identity_loss(path):
    config = OmegaConf.load(path).model
    if config.params.lossconfig.target == LPIPS_TARGET:
        config.params.lossconfig = IDENTITY
    return config


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO_ROOT / "configs/autoencoder/*.yaml"))),
                         ids=os.path.basename)
def test_autoencoder_training_configs_build(path):
    config = _model_config_with_identity_loss(path)
    with torch.device("meta"):
        model = instantiate_from_config(config)
    dd, embed_dim = config.params.ddconfig, config.params.embed_dim
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert keys["encoder.conv_out.weight"][0] == 2 * dd.z_channels
    assert keys["quant_conv.weight"] == (2 * embed_dim, 2 * dd.z_channels, 1, 1)
    assert keys["decoder.conv_out.weight"] == (3, dd.ch * dd.ch_mult[0], 3, 3)
    assert model.monitor == "val/rec_loss"
    n_levels = len(dd.ch_mult)
    has_attention = any(k.startswith(f"encoder.down.{n_levels - 1}.attn.") for k in keys)
    assert has_attention == (dd.resolution // 2 ** (n_levels - 1) in dd.attn_resolutions)


LDM_FIRST_STAGES = sorted(glob.glob(str(REPO_ROOT / "configs/latent-diffusion/*.yaml"))
                          + glob.glob(str(REPO_ROOT / "configs/retrieval-augmented-diffusion/*.yaml")))


@pytest.mark.parametrize("path", LDM_FIRST_STAGES, ids=os.path.basename)
def test_first_stages_of_latent_diffusion_configs_build_even_when_their_ckpt_is_absent(path):
    config = OmegaConf.load(path).model.params.first_stage_config
    ckpt_path = config.params.get("ckpt_path")
    with torch.device("meta"):
        if ckpt_path is not None:
            assert not os.path.exists(ckpt_path)
            with pytest.warns(UserWarning, match="not found"):
                model = instantiate_from_config(config)
        else:
            model = instantiate_from_config(config)
    keys = dict(layout_of(model))
    if config.target.endswith("VQModelInterface"):
        assert isinstance(model, VQModelInterface)
        assert keys["quantize.embedding.weight"] == (config.params.n_embed, config.params.embed_dim)
        assert keys["quant_conv.weight"] == (config.params.embed_dim, config.params.ddconfig.z_channels, 1, 1)
    else:
        assert isinstance(model, AutoencoderKL)
    if config.params.ddconfig.ch_mult == [1, 2, 4, 4] and config.params.embed_dim == 4:
        assert layout_of(model) == read_manifest("v1-inference", prefix="first_stage_model.")


def test_kl_autoencoder_needs_double_z():
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(ddconfig={**TINY_DD, "double_z": False}, lossconfig=IDENTITY, embed_dim=4)


# ---------------------------------------------------------------------------------------------
# Numerics: diffusers as an independent implementation
# ---------------------------------------------------------------------------------------------
def test_encode_and_decode_match_diffusers_autoencoder_converted_by_its_own_converter():
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    model = _tiny_kl().eval()
    _perturb(model)
    checkpoint = {f"first_stage_model.{k}": v for k, v in model.state_dict().items()}
    original_config = {"model": {"params": {"scale_factor": 0.18215,
                                            "first_stage_config": {"params": {"ddconfig": TINY_DD}}}}}
    config = create_vae_diffusers_config_from_ldm(original_config, checkpoint)
    reference = DiffusersAutoencoderKL(**config).eval()
    reference.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=True)

    x, z = torch.randn(2, 3, 32, 24), torch.randn(2, 4, 12, 8)
    with torch.no_grad():
        ours, theirs = model.encode(x), reference.encode(x).latent_dist
        torch.testing.assert_close(ours.mean, theirs.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.logvar, theirs.logvar, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(z), reference.decode(z).sample, rtol=1e-5, atol=2e-5)


def test_posterior_mode_sample_and_kl():
    model = _tiny_kl().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        posterior = model.encode(x)
        moments = model.quant_conv(model.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        torch.testing.assert_close(posterior.mode(), mean)
        expected_kl = 0.5 * (mean ** 2 + logvar.clamp(-30, 20).exp() - 1 - logvar.clamp(-30, 20)).sum(dim=[1, 2, 3])
        torch.testing.assert_close(posterior.kl(), expected_kl)
        dec_mode, _ = model(x, sample_posterior=False)
        torch.testing.assert_close(dec_mode, model.decode(mean))
        torch.manual_seed(1)
        dec_a, _ = model(x)
        torch.manual_seed(1)
        dec_b, _ = model(x)
        torch.manual_seed(2)
        dec_c, _ = model(x)
    torch.testing.assert_close(dec_a, dec_b)
    assert not torch.allclose(dec_a, dec_c)
    assert dec_a.shape == x.shape


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------
def test_tiled_decode_equals_plain_decode_when_one_tile_covers_the_latent():
    model = _tiny_kl().eval()
    z = torch.randn(1, 4, 16, 12)
    with torch.no_grad():
        plain = model.decode(z)
        model.enable_tiling(tile_size=16, overlap=4)
        assert torch.equal(model.decode(z), plain)
        assert torch.equal(model.decode_tiled(z, tile_size=32, overlap=8), plain)


def test_tile_blending_reassembles_a_local_map_exactly():
    def local_map(t):  # pointwise then nearest x4: every output pixel depends on one input pixel
        return torch.tanh(t).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3) * 2

    x = torch.randn(2, 3, 21, 30)
    torch.testing.assert_close(tiling.blend_tiles(local_map, x, tile=8, overlap=3), local_map(x))
    torch.testing.assert_close(tiling.blend_tiles(lambda t: t[..., ::2, ::2], torch.randn(1, 2, 32, 48), tile=16,
                                              overlap=4, align=2).shape, torch.Size([1, 2, 16, 24]))


def test_tiles_shrink_to_the_smallest_size_that_keeps_their_number_and_overlap():
    seen = []

    def record(t):
        seen.append(tuple(t.shape[-2:]))
        return t

    x = torch.randn(1, 1, 128, 128)  # a 1024x1024 SD image's latent with the default 64/16 tiling
    torch.testing.assert_close(tiling.blend_tiles(record, x, tile=64, overlap=16), x)
    assert set(seen) == {(54, 54)} and len(seen) == 9  # 3 x 3 tiles, 29% fewer pixels than 64 x 64
    starts = tiling._tile_starts(128, 54, 16, 1)
    assert starts[0] == 0 and starts[-1] + 54 == 128
    assert min(a + 54 - b for a, b in zip(starts, starts[1:])) >= 16


def test_tile_overlaps_are_cross_faded_linearly():
    def constant_per_tile(t):  # each tile's output disagrees with its neighbour's
        return torch.full_like(t, float(t[0, 0, 0, 0]))

    x = torch.zeros(1, 1, 4, 24)
    x[..., 8] = 1.0  # the second tile starts at column 8 and reads 1 there, the first reads 0
    out = tiling.blend_tiles(constant_per_tile, x, tile=16, overlap=8)
    expected = torch.cat([torch.zeros(8), torch.arange(1, 9) / 9, torch.ones(8)])
    torch.testing.assert_close(out[0, 0], expected.expand(4, 24))


def test_tiled_decode_only_feeds_tile_sized_latents_and_stays_close_to_plain():
    model = _tiny_kl().eval()
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    z = torch.randn(1, 4, 24, 40)
    with torch.no_grad():
        plain = model.decode(z)
        seen.clear()
        model.enable_tiling(tile_size=16, overlap=8)
        tiled = model.decode(z)
        unrelated = model.decode(torch.randn_like(z))
    assert set(seen) == {(16, 16)} and len(seen) == 2 * (2 * 4)
    assert tiled.shape == plain.shape
    # Per-tile GroupNorm statistics make tiling approximate: with these random weights and
    # 16-latent tiles the RMS difference is 0.21-0.28 of the image's std over five seeds, against
    # 1.29-1.38 between decodes of unrelated latents.
    relative_rms = (tiled - plain).pow(2).mean().sqrt() / plain.std()
    unrelated_rms = (unrelated - plain).pow(2).mean().sqrt() / plain.std()
    assert relative_rms < 0.3 * unrelated_rms


def test_tiled_encode_needs_multiples_of_the_downsampling_factor_and_matches_one_tile():
    model = _tiny_kl().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model.encode(x)
        model.enable_tiling(tile_size=16, overlap=4)
        torch.testing.assert_close(model.encode(x).mean, plain.mean, rtol=0, atol=0)
        assert model.encode_tiled(torch.randn(1, 3, 48, 64), tile_size=8, overlap=2).mean.shape == (1, 4, 24, 32)
    with pytest.raises(ValueError, match="divisible by 2"):
        model.encode_tiled(torch.randn(1, 3, 33, 32), tile_size=8)
    with pytest.raises(ValueError, match="overlap"):
        model.enable_tiling(tile_size=8, overlap=8)


# ---------------------------------------------------------------------------------------------
# Training with manual optimization
# ---------------------------------------------------------------------------------------------
class TinyGANLoss(nn.Module):
    """Test loss with LPIPSWithDiscriminator's calling convention: L1 reconstruction through a
    learned logvar plus KL (optimizer_idx 0, with a generator term if there is a discriminator),
    hinge loss for a one-conv discriminator (optimizer_idx 1). Records every call."""

    def __init__(self, with_discriminator: bool = True):
        super().__init__()
        self.logvar = nn.Parameter(torch.zeros(()))
        if with_discriminator:
            self.discriminator = nn.Conv2d(3, 1, 3, padding=1)
        self.calls = []

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer=None,
                cond=None, split="train", weights=None):
        disc = getattr(self, "discriminator", None)
        self.calls.append(dict(idx=optimizer_idx, step=global_step, split=split,
                               disc_trainable=None if disc is None else disc.weight.requires_grad))
        if optimizer_idx == 0:
            rec_loss = (inputs - reconstructions).abs().mean()
            loss = rec_loss / torch.exp(self.logvar) + self.logvar + 1e-6 * posteriors.kl().mean()
            if disc is not None:
                loss = loss - 0.1 * disc(reconstructions).mean()
            return loss, {f"{split}/rec_loss": rec_loss.detach(), f"{split}/total_loss": loss.detach()}
        d_loss = F.relu(1 - disc(inputs.detach())).mean() + F.relu(1 + disc(reconstructions.detach())).mean()
        return d_loss, {f"{split}/disc_loss": d_loss.detach()}


class ImageBatches(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int = 16):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, size, size, 3, generator=generator) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def _fit(model, n_batches=3, val_batches=0, **trainer_kwargs):
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=n_batches, limit_val_batches=val_batches,
                         num_sanity_val_steps=0, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         **trainer_kwargs)
    loader = DataLoader(ImageBatches(2 * max(n_batches, 1)), batch_size=2)
    trainer.fit(model, loader, loader if val_batches else None)
    return trainer


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if k.startswith(prefix))


def test_training_steps_update_autoencoder_and_discriminator_once_per_batch():
    model = _tiny_kl(lossconfig={"target": "tests.models.test_autoencoder.TinyGANLoss"})
    model.learning_rate = 1e-3
    before = _snapshot(model)
    trainer = _fit(model, n_batches=3, val_batches=1)
    assert _changed(before, model, "encoder.") and _changed(before, model, "decoder.")
    assert _changed(before, model, "loss.discriminator.")
    assert not _changed(before, model, "loss.logvar")          # learn_logvar is off
    train_calls = [(c["idx"], c["step"], c["disc_trainable"]) for c in model.loss.calls if c["split"] == "train"]
    # the step handed to the loss counts batches (as the original's global_step), and only the
    # optimizer being stepped has trainable parameters while its loss is built
    assert train_calls == [(0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True), (0, 2, False), (1, 2, True)]
    assert [c["idx"] for c in model.loss.calls if c["split"] == "val"] == [0, 1]
    assert trainer.global_step == 6
    assert "val/rec_loss" in trainer.callback_metrics


def test_training_without_discriminator_uses_one_optimizer_and_learn_logvar_trains_logvar():
    model = _tiny_kl(lossconfig={"target": "tests.models.test_autoencoder.TinyGANLoss",
                                 "params": {"with_discriminator": False}}, learn_logvar=True)
    model.learning_rate = 1e-2
    before = _snapshot(model)
    trainer = _fit(model, n_batches=2)
    assert len(trainer.optimizers) == 1
    assert _changed(before, model, "loss.logvar") and _changed(before, model, "decoder.")
    assert [(c["idx"], c["step"]) for c in model.loss.calls] == [(0, 0), (0, 1)]


def test_train_decoder_only_keeps_the_latent_space_and_trains_the_decoder():
    model = _tiny_kl(lossconfig={"target": "tests.models.test_autoencoder.TinyGANLoss"}, train_decoder_only=True)
    model.learning_rate = 1e-2
    before = _snapshot(model)
    _fit(model, n_batches=2)
    assert not _changed(before, model, "encoder.") and not _changed(before, model, "quant_conv.")
    assert _changed(before, model, "decoder.") and _changed(before, model, "post_quant_conv.")
    assert _changed(before, model, "loss.discriminator.")
    assert all(p.grad is None for p in model.encoder.parameters())   # no wasted backward through it


def test_gradient_accumulation_steps_every_n_batches():
    model = _tiny_kl(lossconfig={"target": "tests.models.test_autoencoder.TinyGANLoss"})
    model.learning_rate = 1e-3
    model.accumulate_grad_batches = 2
    trainer = _fit(model, n_batches=4)
    assert trainer.global_step == 2 * 2


def test_training_an_inference_config_or_without_learning_rate_fails_clearly():
    with pytest.raises(RuntimeError, match="lossconfig torch.nn.Identity"):
        _tiny_kl().configure_optimizers()
    model = _tiny_kl(lossconfig={"target": "tests.models.test_autoencoder.TinyGANLoss"})
    with pytest.raises(RuntimeError, match="learning_rate"):
        model.configure_optimizers()


def test_ema_is_updated_after_each_batch_and_ema_scope_swaps_weights():
    model = _tiny_kl(lossconfig={"target": "tests.models.test_autoencoder.TinyGANLoss"}, ema_decay=0.9)
    assert "model_ema.decay" in model.state_dict() and "model_ema.encoderconv_inweight" in model.state_dict()
    model.learning_rate = 1e-3
    _fit(model, n_batches=2)
    assert int(model.model_ema.num_updates) == 2
    trained = model.encoder.conv_in.weight.detach().clone()
    shadow = model.model_ema.encoderconv_inweight.clone()
    assert not torch.equal(trained, shadow)
    with model.ema_scope("test"):
        assert torch.equal(model.encoder.conv_in.weight, shadow)
    assert torch.equal(model.encoder.conv_in.weight, trained)
    with pytest.raises(ValueError, match="ema_decay"):
        _tiny_kl(ema_decay=1.5)


def test_log_images_returns_inputs_reconstructions_and_samples():
    model = _tiny_kl().eval()
    batch = {"image": torch.rand(2, 16, 16, 3)}
    log = model.log_images(batch)
    assert set(log) == {"inputs", "reconstructions", "samples"}
    assert all(v.shape == (2, 3, 16, 16) for v in log.values())
    assert set(model.log_images(batch, only_inputs=True)) == {"inputs"}


def test_segmentation_inputs_are_colorized_to_rgb():
    dd = {**TINY_DD, "in_channels": 5, "out_ch": 5}
    model = AutoencoderKL(ddconfig=dd, lossconfig=IDENTITY, embed_dim=4, image_key="segmentation",
                          colorize_nlabels=5).eval()
    assert model.colorize.shape == (3, 5, 1, 1)
    log = model.log_images({"segmentation": torch.rand(1, 16, 16, 5)})
    assert log["inputs"].shape == (1, 3, 16, 16)
    assert log["inputs"].min() == -1 and log["inputs"].max() == 1
    with pytest.raises(ValueError, match="segmentation"):
        _tiny_kl().to_rgb(torch.rand(1, 5, 4, 4))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def test_ckpt_path_loads_weights_and_ignore_keys_leaves_them_out(tmp_path):
    source = _tiny_kl()
    _perturb(source)
    path = str(tmp_path / "vae.ckpt")
    save_checkpoint(source.state_dict(), path)
    loaded = _tiny_kl(ckpt_path=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.warns(UserWarning, match="tensors missing"):
        partial = _tiny_kl(ckpt_path=path, ignore_keys=["decoder."])
    assert torch.equal(partial.encoder.conv_in.weight, source.encoder.conv_in.weight)
    assert not torch.equal(partial.decoder.conv_in.weight, source.decoder.conv_in.weight)


def test_ckpt_path_may_be_a_whole_latent_diffusion_checkpoint(tmp_path):
    source = _tiny_kl()
    _perturb(source)
    path = str(tmp_path / "sd.safetensors")
    save_checkpoint({"betas": torch.zeros(3), **{f"first_stage_model.{k}": v for k, v in source.state_dict().items()}},
                    path)
    loaded = _tiny_kl(ckpt_path=path)
    assert torch.equal(loaded.post_quant_conv.weight, source.post_quant_conv.weight)


# ---------------------------------------------------------------------------------------------
# VQ models and the identity first stage
# ---------------------------------------------------------------------------------------------
def _tiny_vq(cls=VQModelInterface, **kwargs):
    dd = {**TINY_DD, "double_z": False}
    return cls(ddconfig=dd, lossconfig=kwargs.pop("lossconfig", IDENTITY), n_embed=16, embed_dim=3, **kwargs)


def test_vq_interface_encodes_before_quantization_and_decodes_through_it():
    model = _tiny_vq().eval()
    _perturb(model.quantize, scale=1.0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = model.encode(x)
        torch.testing.assert_close(h, model.quant_conv(model.encoder(x)))
        quantized = model.quantize(h)[0]
        torch.testing.assert_close(model.decode(h), model.decoder(model.post_quant_conv(quantized)))
        torch.testing.assert_close(model.decode(h, force_not_quantize=True), model.decoder(model.post_quant_conv(h)))
        assert not torch.allclose(model.decode(h), model.decode(h, force_not_quantize=True))


def test_vq_model_forward_returns_codebook_loss_and_indices_and_decodes_codes():
    model = _tiny_vq(VQModel, sane_index_shape=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        dec, diff, ind = model(x, return_pred_indices=True)
        assert dec.shape == x.shape and diff.ndim == 0 and ind.shape == (2, 8, 8)
        torch.testing.assert_close(model.decode_code(ind), dec)


class TinyVQGANLoss(TinyGANLoss):
    """VQLPIPSWithDiscriminator's convention: codebook loss first, then inputs, reconstructions."""

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx, global_step, last_layer=None,
                cond=None, split="train", predicted_indices=None):
        self.calls.append(dict(idx=optimizer_idx, step=global_step, split=split, indices=predicted_indices))
        if optimizer_idx == 0:
            rec_loss = (inputs - reconstructions).abs().mean()
            loss = rec_loss + codebook_loss - 0.1 * self.discriminator(reconstructions).mean()
            return loss, {f"{split}/rec_loss": rec_loss.detach(), f"{split}/quant_loss": codebook_loss.detach()}
        d_loss = F.relu(1 - self.discriminator(inputs)).mean() + F.relu(1 + self.discriminator(reconstructions)).mean()
        return d_loss, {f"{split}/disc_loss": d_loss.detach()}


def test_vq_model_trains_with_two_optimizers_and_a_per_step_lr_schedule():
    scheduler = {"target": "ldm.lr_scheduler.LambdaLinearScheduler",
                 "params": {"warm_up_steps": [4], "cycle_lengths": [1000], "f_start": [0.0], "f_max": [1.0],
                            "f_min": [1.0]}}
    model = _tiny_vq(VQModel, lossconfig={"target": "tests.models.test_autoencoder.TinyVQGANLoss"},
                     scheduler_config=scheduler, lr_g_factor=0.5)
    model.learning_rate = 1e-3
    before = _snapshot(model)
    trainer = _fit(model, n_batches=3, val_batches=1)
    assert _changed(before, model, "quantize.") and _changed(before, model, "loss.discriminator.")
    opt_ae, opt_disc = trainer.optimizers
    assert opt_ae.param_groups[0]["lr"] == pytest.approx(0.5e-3 * 3 / 4)
    assert opt_disc.param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 4)
    val_calls = [c for c in model.loss.calls if c["split"] == "val"]
    assert [c["idx"] for c in val_calls] == [0, 1] and val_calls[0]["indices"] is not None
    assert "val/rec_loss" in trainer.callback_metrics and "val/aeloss" in trainer.callback_metrics


def test_identity_first_stage_passes_everything_through():
    x = torch.randn(1, 3, 4, 4)
    stage = IdentityFirstStage(embed_dim=3, vq_interface=True)
    assert stage.encode(x) is x and stage.decode(x) is x and stage(x) is x
    assert stage.quantize(x) == (x, None, [None, None, None])
    assert IdentityFirstStage().quantize(x) is x


@pytest.mark.parametrize("name", ["AutoencoderKL", "VQModel", "VQModelInterface", "IdentityFirstStage"])
def test_the_original_class_paths_still_name_the_classes(name):
    from ldm.util import get_obj_from_str

    cls = get_obj_from_str(f"ldm.models.autoencoder.{name}")
    assert cls.__name__ == name and cls.__module__.startswith("ldm.models.autoencoder.")
