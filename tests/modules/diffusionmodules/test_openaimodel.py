"""ldm/modules/diffusionmodules/openaimodel.py: the UNet's layout equals the original checkpoints',
its outputs equal diffusers' UNet2DConditionModel on converted weights, and every constructor
option and conditioning style builds and runs."""
import gc

import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.openaimodel import (AttentionBlock, AttentionPool2d, Downsample,
                                                      QKVAttention, QKVAttentionLegacy, ResBlock,
                                                      Timestep, TimestepEmbedSequential, UNetModel,
                                                      Upsample)
from ldm.modules.diffusionmodules.util import timestep_embedding
from ldm.util import instantiate_from_config
from tests.manifests import MANIFEST_CONFIGS, REPO_ROOT, layout_of, read_manifest

UNET_PREFIX = "model.diffusion_model."

SD1_LIKE = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
                num_res_blocks=1, channel_mult=[1, 2, 2], num_heads=2, use_spatial_transformer=True,
                transformer_depth=1, context_dim=32, legacy=False)
SD2_LIKE = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
                num_res_blocks=1, channel_mult=[1, 2, 2], num_head_channels=32, use_spatial_transformer=True,
                use_linear_in_transformer=True, transformer_depth=1, context_dim=48, legacy=False)
UNCLIP_LIKE = dict(SD2_LIKE, num_classes="sequential", adm_in_channels=16)
UPSCALER_LIKE = dict(SD2_LIKE, in_channels=7, num_classes=10, num_heads=2, num_head_channels=-1,
                     disable_self_attentions=[True, False, False])


def _unet_config(params: dict):
    return OmegaConf.create({"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": params})


def _tiny_unet(params: dict) -> UNetModel:
    """A tiny UNet with every parameter perturbed, so that zero-initialised layers matter."""
    model = instantiate_from_config(_unet_config(params))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _inputs(params: dict, batch: int = 2, size: int = 8):
    x = torch.randn(batch, params["in_channels"], size, size)
    t = torch.tensor([10, 900][:batch] + [500] * max(0, batch - 2))
    context = torch.randn(batch, 5, params["context_dim"]) if params.get("context_dim") else None
    num_classes = params.get("num_classes")
    if num_classes is None:
        y = None
    elif num_classes == "sequential":
        y = torch.randn(batch, params["adm_in_channels"])
    elif num_classes == "continuous":
        y = torch.randn(batch, 1)
    else:
        y = torch.randint(0, num_classes, (batch,))
    return x, t, context, y


# ---------------------------------------------------------------------------------------------
# Layout of the original checkpoints
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MANIFEST_CONFIGS))
def test_unet_from_original_config_has_the_checkpoint_layout(name):
    config = OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS[name])
    with torch.device("meta"):
        unet = instantiate_from_config(config.model.params.unet_config)
    assert layout_of(unet) == read_manifest(name, prefix=UNET_PREFIX)


# ---------------------------------------------------------------------------------------------
# Equivalence with diffusers (an independent implementation of the same network)
# ---------------------------------------------------------------------------------------------
def _diffusers_twin(params: dict, unet: UNetModel):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     create_unet_diffusers_config_from_ldm)

    original_config = {"model": {"params": {
        "unet_config": {"params": dict(params)},
        "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    checkpoint = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(original_config, checkpoint, image_size=64)
    twin = UNet2DConditionModel(**config)
    twin.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    return twin.eval()


@pytest.mark.filterwarnings("ignore:.*image_size.*:FutureWarning")
@pytest.mark.parametrize("params", [SD1_LIKE, SD2_LIKE, UNCLIP_LIKE, UPSCALER_LIKE],
                         ids=["sd1-like", "sd2-like", "unclip-like", "x4-upscaler-like"])
def test_unet_matches_diffusers_on_converted_weights(params):
    unet = _tiny_unet(params)
    twin = _diffusers_twin(params, unet)
    x, t, context, y = _inputs(params)
    with torch.no_grad():
        ours = unet(x, t, context=context, y=y)
        theirs = twin(x, t, encoder_hidden_states=context, class_labels=y).sample
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Full-size networks run (one step each, 8x8 latent)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, context_dim", [("v1-inference", 768), ("v2-inference", 1024)])
def test_full_size_unet_runs_one_step_on_cpu_in_float32(name, context_dim):
    config = OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS[name])
    unet = instantiate_from_config(config.model.params.unet_config)
    torch.nn.init.normal_(unet.out[2].weight, std=0.01)
    try:
        with torch.no_grad():
            out = unet(torch.randn(1, 4, 8, 8), torch.tensor([999]), context=torch.randn(1, 77, context_dim))
        assert out.shape == (1, 4, 8, 8) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and out.abs().sum() > 0
    finally:
        del unet
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Conditioning styles and options
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [
    SD1_LIKE,
    dict(SD1_LIKE, num_classes=10),
    UNCLIP_LIKE,
    dict(SD2_LIKE, num_classes="continuous"),
    dict(image_size=8, in_channels=3, out_channels=6, model_channels=32, attention_resolutions=[2],
         num_res_blocks=[1, 2], channel_mult=[1, 2], num_head_channels=32, use_scale_shift_norm=True,
         resblock_updown=True),
    dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[1, 2],
         num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_new_attention_order=True, num_classes=5),
], ids=["context", "class-labels", "adm-sequential", "continuous", "adm-unet-updown-scaleshift",
        "new-attention-order"])
def test_tiny_unet_runs_with_each_conditioning_style(params):
    unet = _tiny_unet(params)
    x, t, context, y = _inputs(params)
    out = unet(x, t, context=context, y=y)
    assert out.shape == (2, params["out_channels"], 8, 8) and torch.isfinite(out).all()


def test_class_labels_change_the_output():
    params = dict(SD1_LIKE, num_classes=10)
    unet = _tiny_unet(params)
    x, t, context, _ = _inputs(params)
    with torch.no_grad():
        a = unet(x, t, context=context, y=torch.tensor([1, 2]))
        b = unet(x, t, context=context, y=torch.tensor([3, 4]))
    assert not torch.allclose(a, b)


def test_unet_accepts_a_list_of_contexts_one_per_transformer_block():
    params = dict(SD1_LIKE, transformer_depth=2, context_dim=OmegaConf.create([32, 16]))
    unet = _tiny_unet(params)
    x, t, _, _ = _inputs(SD1_LIKE)
    out = unet(x, t, context=[torch.randn(2, 5, 32), torch.randn(2, 3, 16)])
    assert out.shape == x.shape
    block = unet.input_blocks[1][1].transformer_blocks
    assert [b.attn2.to_k.weight.shape[1] for b in block] == [32, 16]


def test_codebook_head_predicts_n_embed_logits():
    params = dict(SD1_LIKE, n_embed=64)
    unet = _tiny_unet(params)
    x, t, context, _ = _inputs(params)
    assert unet(x, t, context=context).shape == (2, 64, 8, 8)
    assert [k for k in unet.state_dict() if k.startswith("id_predictor")] == [
        "id_predictor.0.weight", "id_predictor.0.bias", "id_predictor.1.weight", "id_predictor.1.bias"]


def test_per_level_res_blocks_and_attention_blocks_shape_the_network():
    unet = UNetModel(**dict(SD1_LIKE, num_res_blocks=OmegaConf.create([2, 1, 3]),
                            num_attention_blocks=[1, 0, 2]))
    assert len(unet.input_blocks) == 1 + 2 + 1 + 1 + 1 + 3
    assert len(unet.output_blocks) == 4 + 2 + 3

    def has_attention(block):
        return any(isinstance(layer, SpatialTransformer) for layer in block)

    assert [has_attention(b) for b in unet.input_blocks] == [False, True, False, False, False, False,
                                                             False, False, False]
    assert [has_attention(b) for b in unet.output_blocks] == [False] * 4 + [False] * 2 + [True, False, False]


def test_disable_self_attentions_make_attn1_attend_to_the_context():
    unet = UNetModel(**UPSCALER_LIKE)
    assert unet.input_blocks[1][1].transformer_blocks[0].attn1.to_k.weight.shape == (32, 48)
    assert unet.input_blocks[3][1].transformer_blocks[0].attn1.to_k.weight.shape == (64, 64)
    assert unet.middle_block[1].transformer_blocks[0].attn1.to_k.weight.shape == (64, 64)
    unet = UNetModel(**dict(SD2_LIKE, disable_middle_self_attn=True))
    assert unet.middle_block[1].transformer_blocks[0].attn1.to_k.weight.shape == (64, 48)


@pytest.mark.parametrize("ch, num_heads, num_head_channels, legacy, spatial, expected", [
    (640, 8, -1, False, True, (8, 80)),       # SD 1.x
    (640, -1, 64, False, True, (10, 64)),     # SD 2.x
    (256, -1, 32, True, False, (8, 32)),      # CompVis LDM, ADM attention
    (192, 1, -1, True, False, (1, -1)),       # cin256-v2: legacy keeps num_head_channels
    (448, -1, 32, True, True, (14, 32)),      # RDM, legacy spatial transformer
])
def test_attention_heads_follow_the_original_rules(ch, num_heads, num_head_channels, legacy, spatial, expected):
    assert openaimodel.attention_heads(ch, num_heads, num_head_channels, legacy, spatial) == expected


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    params = dict(SD1_LIKE, num_classes=10)
    plain = _tiny_unet(dict(params, use_checkpoint=False))
    checkpointed = UNetModel(**dict(params, use_checkpoint=True))
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    x, t, context, y = _inputs(params)
    grads = []
    for model in (plain, checkpointed):
        calls.clear()
        model.zero_grad()
        model(x, t, context=context, y=y).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        grads[-1].append(len(calls))
    assert grads[0][-1] == 0 and grads[1][-1] > 0
    for a, b in zip(grads[0][:-1], grads[1][:-1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# dtype policy
# ---------------------------------------------------------------------------------------------
def test_use_fp16_flag_does_not_cast_a_float32_unet():
    plain = _tiny_unet(SD2_LIKE)
    flagged = UNetModel(**dict(SD2_LIKE, use_fp16=True))
    flagged.load_state_dict(plain.state_dict())
    x, t, context, _ = _inputs(SD2_LIKE)
    with torch.no_grad():
        out = flagged.eval()(x, t, context=context)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, plain(x, t, context=context), rtol=0, atol=0)


def test_unet_computes_in_the_dtype_of_its_weights_and_returns_the_input_dtype():
    params = UNCLIP_LIKE
    unet = _tiny_unet(params)
    x, t, context, y = _inputs(params)
    with torch.no_grad():
        reference = unet(x, t, context=context, y=y)
        half = unet.to(torch.bfloat16)
        assert half.dtype == torch.bfloat16
        out = half(x, t, context=context, y=y)
    assert out.dtype == torch.float32
    assert (out - reference).abs().mean() < 0.05 * reference.abs().mean()


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def _attention_reference(q, k, v):
    """(batch*heads, ch, length) q, k, v -> softmax(qᵀk / sqrt(ch)) applied to v."""
    weights = torch.einsum("bct,bcs->bts", q, k) / q.shape[1] ** 0.5
    return torch.einsum("bts,bcs->bct", weights.softmax(dim=-1), v)


def test_qkv_attention_legacy_splits_heads_before_q_k_v():
    qkv = torch.randn(2, 3 * 2 * 8, 10)
    q, k, v = qkv.reshape(4, 24, 10).split(8, dim=1)
    expected = _attention_reference(q, k, v).reshape(2, 16, 10)
    torch.testing.assert_close(QKVAttentionLegacy(2)(qkv), expected, rtol=1e-5, atol=1e-6)


def test_qkv_attention_splits_q_k_v_before_heads():
    qkv = torch.randn(2, 3 * 2 * 8, 10)
    q, k, v = (t.reshape(4, 8, 10) for t in qkv.chunk(3, dim=1))
    expected = _attention_reference(q, k, v).reshape(2, 16, 10)
    torch.testing.assert_close(QKVAttention(2)(qkv), expected, rtol=1e-5, atol=1e-6)


def test_attention_block_keys_and_identity_at_init():
    block = AttentionBlock(64, num_head_channels=32)
    assert block.num_heads == 2
    assert [k for k in block.state_dict()] == ["norm.weight", "norm.bias", "qkv.weight", "qkv.bias",
                                               "proj_out.weight", "proj_out.bias"]
    x = torch.randn(1, 64, 3, 3)
    torch.testing.assert_close(block(x), x)


def test_resblock_scale_shift_norm_applies_film_to_the_normalised_features():
    block = ResBlock(32, 16, dropout=0.0, out_channels=64, use_scale_shift_norm=True).eval()
    torch.nn.init.normal_(block.out_layers[3].weight, std=0.1)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    h = block.in_layers(x)
    scale, shift = block.emb_layers(emb)[..., None, None].chunk(2, dim=1)
    h = block.out_layers[3](torch.nn.functional.silu(block.out_layers[0](h) * (1 + scale) + shift))
    torch.testing.assert_close(block(x, emb), block.skip_connection(x) + h, rtol=1e-5, atol=1e-5)
    assert block.skip_connection.weight.shape == (64, 32, 1, 1)


@pytest.mark.parametrize("dims, shape, up_shape, down_shape", [
    (2, (1, 32, 4, 6), (1, 32, 8, 12), (1, 32, 2, 3)),
    (3, (1, 32, 2, 4, 6), (1, 32, 2, 8, 12), (1, 32, 2, 2, 3)),
    (1, (1, 32, 8), (1, 32, 16), (1, 32, 4)),
])
def test_resampling_acts_on_the_spatial_axes(dims, shape, up_shape, down_shape):
    x = torch.randn(shape)
    for use_conv in (True, False):
        assert Upsample(32, use_conv, dims=dims)(x).shape == up_shape
        assert Downsample(32, use_conv, dims=dims)(x).shape == down_shape


def test_timestep_embed_sequential_routes_emb_and_context():
    seq = TimestepEmbedSequential(ResBlock(32, 16, 0.0), SpatialTransformer(32, 2, 16, context_dim=8),
                                  torch.nn.Identity())
    out = seq(torch.randn(1, 32, 2, 2), torch.randn(1, 16), torch.randn(1, 3, 8))
    assert out.shape == (1, 32, 2, 2)


def test_timestep_module_is_the_sinusoidal_embedding():
    t = torch.tensor([0.0, 3.0, 999.0])
    torch.testing.assert_close(Timestep(32)(t), timestep_embedding(t, 32))


def test_attention_pool_returns_one_vector_per_image():
    pool = AttentionPool2d(4, 64, 32, output_dim=10)
    assert pool(torch.randn(3, 64, 4, 4)).shape == (3, 10)


# ---------------------------------------------------------------------------------------------
# Bad configurations and inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (dict(num_res_blocks=[1, 1]), "same length as channel_mult"),
    (dict(use_spatial_transformer=False), "use_spatial_transformer is False"),
    (dict(context_dim=None), "needs context_dim"),
    (dict(num_heads=-1), "num_heads or num_head_channels"),
    (dict(num_classes="onehot"), "num_classes must be"),
    (dict(num_classes="sequential"), "adm_in_channels"),
    (dict(num_attention_blocks=[2, 1, 1]), "exceeds num_res_blocks"),
])
def test_bad_unet_configs_raise_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNetModel(**dict(SD1_LIKE, **overrides))


def test_class_labels_are_required_exactly_for_class_conditional_unets():
    x, t, context, _ = _inputs(SD1_LIKE)
    with pytest.raises(ValueError, match="if and only if"):
        UNetModel(**SD1_LIKE)(x, t, context=context, y=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="if and only if"):
        UNetModel(**dict(SD1_LIKE, num_classes=3))(x, t, context=context)
