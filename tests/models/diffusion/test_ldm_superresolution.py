"""The latent-diffusion BSR super-resolution model built from its original config
(``configs/latent-diffusion/bsr_sr.yaml``, shrunk by ``LDM_SR_TINY_OVERRIDES``): a plain
``LatentDiffusion`` that concatenates the low-resolution image to a VQ-f4 latent of the same size,
with the layout the original code gives it, so a released checkpoint loads strictly."""
import pytest
import torch

from ldm.models.autoencoder import VQModelInterface
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.util import instantiate_from_config, load_model_from_config, save_checkpoint
from tests.manifests import read_manifest
from tests.tiny_configs import LDM_SR_CONFIG, tiny_ldm_superres_config

# The noise schedule buffers the original DDPM registers as persistent (lvlb_weights is not).
SCHEDULE_BUFFERS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_ldm_superres_config().model).eval()
    with torch.no_grad():  # zero-initialised layers (the UNet's output conv) would hide the conditioning
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    return model


def test_the_config_is_the_originals():
    text = LDM_SR_CONFIG.read_text()
    for line in ("target: ldm.models.diffusion.ddpm.LatentDiffusion", "concat_mode: true", "cond_stage_key: LR_image",
                 "target: ldm.models.autoencoder.VQModelInterface", "in_channels: 6", "n_embed: 8192",
                 "target: ldm.data.openimages.SuperresOpenImagesAdvancedTrain"):
        assert line in text


def test_it_is_a_concat_ldm_with_a_vq_f4_first_stage_and_no_conditioning_network(model):
    assert isinstance(model, LatentDiffusion)  # a Lightning subclass of it once Lightning is imported
    assert model.model.conditioning_key == "concat"  # concat_mode: true, no conditioning_key
    assert isinstance(model.first_stage_model, VQModelInterface)
    assert isinstance(model.cond_stage_model, torch.nn.Identity)
    assert model.use_ema and model.cond_stage_key == "LR_image"
    low_res = torch.rand(1, 3, 8, 16) * 2 - 1
    assert torch.equal(model.get_learned_conditioning(low_res), low_res)


def test_its_state_dict_has_the_layout_of_the_original_code(model):
    keys = list(model.state_dict())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unet = [k[len("model.diffusion_model."):] for k in keys if k.startswith("model.diffusion_model.")]
    assert [k for k in keys if not k.startswith(("model.", "model_ema.", "first_stage_model."))] == SCHEDULE_BUFFERS
    assert not any(k.startswith("cond_stage_model.") for k in keys)  # torch.nn.Identity has no weights
    # LitEma: one shadow per UNet parameter, named without dots, plus decay and num_updates
    ema = [k for k in keys if k.startswith("model_ema.")]
    assert ema[:2] == ["model_ema.decay", "model_ema.num_updates"]
    assert ema[2:] == ["model_ema." + "diffusion_model" + k.replace(".", "") for k in unet]
    # UNet: 6 channels in (latent 3 + low-res image 3), 3 out, four levels of two blocks (here one),
    # legacy AttentionBlocks (norm, qkv, proj_out) at downsampling rate 8 and in the middle
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (32, 6, 3, 3)
    assert shapes["model.diffusion_model.out.2.weight"] == (3, 32, 3, 3)
    assert shapes["model.diffusion_model.input_blocks.7.1.qkv.weight"] == (384, 128, 1)
    assert "model.diffusion_model.middle_block.1.proj_out.weight" in shapes
    assert not any(".transformer_blocks." in k for k in keys)
    # VQ first stage: codebook of embed_dim 3, 1x1 convs around it, no loss weights
    vq = {k: v for k, v in shapes.items() if k.startswith("first_stage_model.") and ".encoder." not in k
          and ".decoder." not in k}
    assert vq == {"first_stage_model.quantize.embedding.weight": (64, 3),
                  "first_stage_model.quant_conv.weight": (3, 3, 1, 1), "first_stage_model.quant_conv.bias": (3,),
                  "first_stage_model.post_quant_conv.weight": (3, 3, 1, 1),
                  "first_stage_model.post_quant_conv.bias": (3,)}


def test_its_first_stage_encoder_and_decoder_are_named_as_the_original_f4_autoencoders():
    """The VQ-f4 and the x4 upscaler's KL-f4 share the original Encoder/Decoder (ch_mult 1, 2, 4,
    two res blocks, no attention): at full depth their keys must be those of the measured
    x4-upscaling manifest."""
    config = tiny_ldm_superres_config("model.params.first_stage_config.params.ddconfig.num_res_blocks=2")
    first_stage = instantiate_from_config(config.model.params.first_stage_config)
    ours = [k for k in first_stage.state_dict() if k.startswith(("encoder.", "decoder."))]
    original = [k for k, _ in read_manifest("x4-upscaling", prefix="first_stage_model.")
                if k.startswith(("encoder.", "decoder."))]
    assert ours == original


def test_a_lightning_checkpoint_of_it_loads_strictly_with_its_ema_weights(model, tmp_path):
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() and v.dim() else v
             for k, v in model.state_dict().items()}
    path = tmp_path / "last.ckpt"
    save_checkpoint(state, str(path), metadata={"global_step": 7, "epoch": 1})
    loaded = load_model_from_config(tiny_ldm_superres_config(), str(path), device="cpu", verbose=False)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    config = tiny_ldm_superres_config("model.params.unet_config.params.in_channels=7")
    with pytest.raises(Exception, match="input_blocks.0.0.weight"):
        load_model_from_config(config, str(path), device="cpu", verbose=False)


def test_sampling_concatenates_the_low_res_image_and_decodes_4x_larger(model):
    from ldm.models.diffusion.ddim import DDIMSampler

    low_res = torch.rand(2, 3, 8, 16) * 2 - 1
    with torch.no_grad():
        z, _ = DDIMSampler(model).sample(S=2, batch_size=2, shape=[3, 8, 16], conditioning=low_res, eta=1.0,
                                         verbose=False)
        images = model.decode_first_stage(z)
    assert images.shape == (2, 3, 32, 64)
    # the conditioning reaches the UNet: another low-res image changes its prediction
    x, t = torch.randn(1, 3, 8, 16), torch.tensor([500])
    with torch.no_grad():
        assert not torch.allclose(model.apply_model(x, t, low_res[:1]), model.apply_model(x, t, low_res[1:]))
