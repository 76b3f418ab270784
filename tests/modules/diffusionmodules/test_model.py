"""Autoencoder building blocks and encoder/decoder of ldm.modules.diffusionmodules.model:
formulas checked against independent closed forms, layouts against the original key names."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.diffusionmodules import model as M

TINY = dict(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[16], dropout=0.0,
            in_channels=3, resolution=32, z_channels=4)


def test_timestep_embedding_is_sin_then_cos_with_half_minus_one_spacing():
    t = torch.tensor([0.0, 3.0, 250.0])
    dim = 8
    emb = M.get_timestep_embedding(t, dim)
    expected = torch.zeros(3, dim)
    for row, step in enumerate(t.tolist()):
        for i in range(dim // 2):
            freq = 10000 ** (-i / (dim // 2 - 1))
            expected[row, i] = math.sin(step * freq)
            expected[row, dim // 2 + i] = math.cos(step * freq)
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_of_odd_size_ends_with_a_zero_column():
    emb = M.get_timestep_embedding(torch.tensor([5.0, 7.0]), 9)
    assert emb.shape == (2, 9)
    assert torch.all(emb[:, -1] == 0)
    torch.testing.assert_close(emb[:, :8], M.get_timestep_embedding(torch.tensor([5.0, 7.0]), 8))


def test_timestep_embedding_rejects_batched_2d_timesteps():
    with pytest.raises(ValueError, match="1-D"):
        M.get_timestep_embedding(torch.zeros(2, 1), 8)


def test_normalize_is_groupnorm_with_32_groups_and_eps_1e_minus_6():
    norm = M.Normalize(64)
    assert (norm.num_groups, norm.eps, norm.affine) == (32, 1e-6, True)


def test_nonlinearity_is_swish():
    x = torch.linspace(-4, 4, 17)
    torch.testing.assert_close(M.nonlinearity(x), x / (1 + torch.exp(-x)))


def test_downsample_pads_right_and_bottom_only_then_strided_conv():
    down = M.Downsample(32, with_conv=True)
    x = torch.randn(1, 32, 9, 10)
    padded = torch.zeros(1, 32, 10, 11)
    padded[..., :9, :10] = x
    expected = F.conv2d(padded, down.conv.weight, down.conv.bias, stride=2)
    out = down(x)
    assert out.shape == (1, 32, 4, 5)
    torch.testing.assert_close(out, expected)


def test_downsample_without_conv_average_pools():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = M.Downsample(1, with_conv=False)(x)
    torch.testing.assert_close(out, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_upsample_repeats_each_pixel_twice_before_the_conv():
    x = torch.randn(1, 32, 3, 3)
    up = M.Upsample(32, with_conv=False)
    torch.testing.assert_close(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert M.Upsample(32, with_conv=True)(x).shape == (1, 32, 6, 6)


def test_resnet_block_computes_the_preactivation_residual_with_nin_shortcut():
    block = M.ResnetBlock(in_channels=32, out_channels=64, dropout=0.0, temb_channels=0).eval()
    assert not hasattr(block, "temb_proj")
    x = torch.randn(2, 32, 6, 6)

    def swish(v):
        return v * torch.sigmoid(v)

    h = block.conv1(swish(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias, 1e-6)))
    h = block.conv2(swish(F.group_norm(h, 32, block.norm2.weight, block.norm2.bias, 1e-6)))
    expected = block.nin_shortcut(x) + h
    torch.testing.assert_close(block(x, None), expected)


def test_resnet_block_adds_the_projected_time_embedding():
    block = M.ResnetBlock(in_channels=32, dropout=0.0, temb_channels=16)
    x = torch.randn(1, 32, 4, 4)
    assert not torch.allclose(block(x, torch.zeros(1, 16)), block(x, torch.ones(1, 16)))
    wide = M.ResnetBlock(in_channels=32, out_channels=64, conv_shortcut=True, dropout=0.0)
    assert wide.conv_shortcut.weight.shape == (64, 32, 3, 3)


def _explicit_attention(block, x):
    """The original's bmm formulation: w = softmax(q^T k / sqrt(C)) over keys, out = v w^T."""
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    b, c, hh, ww = q.shape
    q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
    k = k.reshape(b, c, hh * ww)
    w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)
    out = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
    return x + block.proj_out(out)


@pytest.mark.parametrize("attn_type", ["vanilla", "vanilla-xformers"])
def test_attention_block_equals_the_explicit_softmax_attention(attn_type):
    block = M.make_attn(32, attn_type)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(block(x), _explicit_attention(block, x), rtol=1e-5, atol=1e-5)


def test_both_attention_types_have_the_original_conv1x1_keys():
    for attn_type in ("vanilla", "vanilla-xformers"):
        keys = {k: tuple(v.shape) for k, v in M.make_attn(32, attn_type).state_dict().items()}
        assert keys == {"norm.weight": (32,), "norm.bias": (32,), "q.weight": (32, 32, 1, 1), "q.bias": (32,),
                        "k.weight": (32, 32, 1, 1), "k.bias": (32,), "v.weight": (32, 32, 1, 1), "v.bias": (32,),
                        "proj_out.weight": (32, 32, 1, 1), "proj_out.bias": (32,)}


def test_linear_attention_matches_its_formula_and_has_no_residual():
    block = M.make_attn(32, "linear")
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == {
        "to_qkv.weight": (96, 32, 1, 1), "to_out.weight": (32, 32, 1, 1), "to_out.bias": (32,)}
    x = torch.randn(2, 32, 3, 4)
    qkv = F.conv2d(x, block.to_qkv.weight).reshape(2, 3, 32, 12)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    context = torch.softmax(k, dim=-1) @ v.transpose(1, 2)  # [b, d, e]
    out = (context.transpose(1, 2) @ q).reshape(2, 32, 3, 4)
    torch.testing.assert_close(block(x), block.to_out(out), rtol=1e-5, atol=1e-5)


def test_make_attn_none_is_identity_and_unknown_types_are_refused():
    x = torch.randn(1, 32, 2, 2)
    assert torch.equal(M.make_attn(32, "none")(x), x)
    with pytest.raises(ValueError, match="attn_type must be one of"):
        M.make_attn(32, "memory-efficient-cross-attn")


def test_encoder_places_attention_by_config_resolution_and_outputs_double_z():
    enc = M.Encoder(**TINY)
    keys = set(enc.state_dict())
    assert "down.1.attn.0.q.weight" in keys and not any(k.startswith("down.0.attn") for k in keys)
    assert "down.0.downsample.conv.weight" in keys and not any(k.startswith("down.1.downsample") for k in keys)
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 8, 16, 16)
    assert M.Encoder(**{**TINY, "double_z": False})(torch.randn(1, 3, 16, 16)).shape == (1, 4, 8, 8)


def test_decoder_has_one_more_block_per_level_and_upsamples_to_image():
    dec = M.Decoder(**TINY, unused_key="ignored")
    keys = set(dec.state_dict())
    assert {"up.0.block.1.conv1.weight", "up.1.block.1.conv1.weight", "up.1.upsample.conv.weight",
            "up.1.attn.1.q.weight"} <= keys
    assert not any(k.startswith("up.0.upsample") or k.startswith("up.0.attn") for k in keys)
    assert dec.z_shape == (1, 4, 16, 16)
    z = torch.randn(2, 4, 8, 8)
    assert dec(z).shape == (2, 3, 16, 16)
    assert dec.last_z_shape == z.shape


def test_decoder_give_pre_end_and_tanh_out():
    z = torch.randn(1, 4, 4, 4)
    assert M.Decoder(**TINY, give_pre_end=True)(z).shape == (1, 32, 8, 8)
    out = M.Decoder(**TINY, tanh_out=True)(z)
    assert out.abs().max() <= 1


def test_use_linear_attn_switches_every_attention_to_linear():
    enc = M.Encoder(**TINY, use_linear_attn=True)
    assert isinstance(enc.mid.attn_1, M.LinAttnBlock) and isinstance(enc.down[1].attn[0], M.LinAttnBlock)


def test_pixel_unet_model_uses_time_and_context_and_keeps_skip_layout():
    net = M.Model(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[8], in_channels=6,
                  resolution=16)
    keys = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert keys["temb.dense.0.weight"] == (128, 32) and keys["temb.dense.1.weight"] == (128, 128)
    assert keys["up.1.block.0.conv1.weight"] == (64, 128, 3, 3)   # 64 + 64 skip channels in
    assert keys["up.0.block.1.conv1.weight"] == (32, 64, 3, 3)    # last block takes the conv_in skip
    assert "down.1.attn.0.q.weight" in keys and "up.1.attn.1.q.weight" in keys
    x, context = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    out_a = net(x, torch.tensor([1, 2]), context=context)
    out_b = net(x, torch.tensor([500, 900]), context=context)
    assert out_a.shape == (2, 3, 16, 16) and not torch.allclose(out_a, out_b)
    assert net.get_last_layer() is net.conv_out.weight
    with pytest.raises(ValueError, match="pass t"):
        net(x, None, context=context)


def test_small_decoders_and_rescalers_produce_the_expected_shapes():
    x = torch.randn(1, 32, 8, 8)
    assert M.SimpleDecoder(32, 3)(x).shape == (1, 3, 16, 16)
    assert M.UpsampleDecoder(32, 3, ch=32, num_res_blocks=1, resolution=16, ch_mult=(1, 1))(x).shape == (1, 3, 16, 16)
    rescaler = M.LatentRescaler(factor=0.5, in_channels=32, mid_channels=32, out_channels=4, depth=1)
    assert rescaler(x).shape == (1, 4, 4, 4)
    enc = M.MergedRescaleEncoder(in_channels=3, ch=32, resolution=16, out_ch=4, num_res_blocks=1,
                                 attn_resolutions=[], ch_mult=(1, 1), rescale_factor=0.5)
    assert enc(torch.randn(1, 3, 16, 16)).shape == (1, 4, 4, 4)
    dec = M.MergedRescaleDecoder(z_channels=32, out_ch=3, resolution=16, num_res_blocks=1, attn_resolutions=[],
                                 ch=32, ch_mult=(1, 1))
    assert dec(x).shape == (1, 3, 16, 16)
    assert M.Upsampler(in_size=8, out_size=16, in_channels=32, out_channels=3)(x).shape == (1, 3, 16, 16)


def test_resize_interpolates_and_refuses_learned_mode():
    x = torch.randn(1, 3, 4, 4)
    assert M.Resize()(x) is x
    assert M.Resize(mode="bilinear")(x, scale_factor=2.0).shape == (1, 3, 8, 8)
    with pytest.raises(NotImplementedError):
        M.Resize(in_channels=3, learned=True)
    with pytest.raises(ValueError, match="out_size >= in_size"):
        M.Upsampler(in_size=16, out_size=8, in_channels=32, out_channels=3)


ORIGINAL_NAMES = ["get_timestep_embedding", "nonlinearity", "Normalize", "Upsample", "Downsample", "ResnetBlock",
                  "AttnBlock", "MemoryEfficientAttnBlock", "LinAttnBlock", "make_attn", "Encoder", "Decoder", "Model",
                  "SimpleDecoder", "UpsampleDecoder", "LatentRescaler", "MergedRescaleEncoder", "MergedRescaleDecoder",
                  "Upsampler", "Resize"]


@pytest.mark.parametrize("name", ORIGINAL_NAMES)
def test_every_original_name_is_importable_from_the_original_module(name):
    from ldm.util import get_obj_from_str

    assert get_obj_from_str(f"ldm.modules.diffusionmodules.model.{name}") is getattr(M, name)
