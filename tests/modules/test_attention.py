"""ldm/modules/attention.py: attention maths against plain formulas, the per-model precision and
slicing settings, and the transformer layers' layouts and variants."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ldm.modules import attention
from ldm.modules.attention import (
    GEGLU,
    BasicTransformerBlock,
    CrossAttention,
    FeedForward,
    LinearAttention,
    MemoryEfficientCrossAttention,
    SpatialSelfAttention,
    SpatialTransformer,
    scaled_dot_product,
)


@pytest.fixture(autouse=True)
def _default_precision(monkeypatch):
    """The layers built here start from the default precision, whatever the caller's environment."""
    monkeypatch.delenv("ATTN_PRECISION", raising=False)


def _reference_cross_attention(layer: CrossAttention, x, context, mask=None):
    """softmax(q kᵀ / sqrt(d)) v per head, written out with einsum (the original's formula)."""
    h = layer.heads
    q, k, v = layer.to_q(x), layer.to_k(context), layer.to_v(context)
    b, n, inner = q.shape
    d = inner // h
    q, k, v = (t.reshape(b, -1, h, d).permute(0, 2, 1, 3) for t in (q, k, v))
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * d ** -0.5
    if mask is not None:
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
    return layer.to_out(out.permute(0, 2, 1, 3).reshape(b, n, inner))


def test_cross_attention_layout_has_bias_free_qkv_and_to_out_0():
    layer = CrossAttention(64, context_dim=48, heads=4, dim_head=16)
    assert [(k, tuple(v.shape)) for k, v in layer.state_dict().items()] == [
        ("to_q.weight", (64, 64)), ("to_k.weight", (64, 48)), ("to_v.weight", (64, 48)),
        ("to_out.0.weight", (64, 64)), ("to_out.0.bias", (64,))]


def test_cross_attention_equals_the_softmax_formula():
    layer = CrossAttention(64, context_dim=48, heads=4, dim_head=16).eval()
    x, context = torch.randn(2, 10, 64), torch.randn(2, 7, 48)
    torch.testing.assert_close(layer(x, context), _reference_cross_attention(layer, x, context),
                               rtol=1e-5, atol=1e-6)


def test_self_attention_is_attention_over_x_itself():
    layer = CrossAttention(32, heads=2, dim_head=16).eval()
    x = torch.randn(1, 9, 32)
    torch.testing.assert_close(layer(x), _reference_cross_attention(layer, x, x), rtol=1e-5, atol=1e-6)


def test_masked_keys_are_ignored():
    layer = CrossAttention(32, context_dim=32, heads=2, dim_head=16).eval()
    x, context = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    out = layer(x, context, mask=mask)
    torch.testing.assert_close(out[:1], layer(x[:1], context[:1, :4]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, _reference_cross_attention(layer, x, context, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("slice_size", [1, 3, 7, 100])
def test_sliced_attention_equals_unsliced(slice_size):
    layer = CrossAttention(64, context_dim=32, heads=4, dim_head=16).eval()
    x, context = torch.randn(2, 20, 64), torch.randn(2, 7, 32)
    full = layer(x, context)
    assert attention.set_attention_slicing(layer, slice_size) == 1
    torch.testing.assert_close(layer(x, context), full, rtol=1e-6, atol=1e-6)


def test_sliced_attention_computes_one_chunk_of_rows_at_a_time(monkeypatch):
    rows_seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        rows_seen.append(q.shape[-2])
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    q, k, v = torch.randn(3, 1, 2, 20, 16).unbind(0)
    scaled_dot_product(q, k, v, slice_size=8)
    assert rows_seen == [8, 8, 4]


def test_sliced_attention_gradients_equal_unsliced():
    layer = CrossAttention(32, heads=2, dim_head=16)
    x = torch.randn(1, 12, 32, requires_grad=True)
    layer(x).square().sum().backward()
    full_grad = x.grad.clone()
    x.grad = None
    attention.set_attention_slicing(layer, 5)
    layer(x).square().sum().backward()
    torch.testing.assert_close(x.grad, full_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -4, 2.5, "auto", True])
def test_attention_slicing_rejects_non_positive_integers(bad):
    layer = CrossAttention(32, heads=2, dim_head=16)
    with pytest.raises(ValueError, match="positive integer"):
        attention.set_attention_slicing(layer, bad)
    assert layer.attention_slice_size is None


@pytest.mark.parametrize("precision, sdpa_upcasts, computed_dtype", [
    ("fp32", False, torch.float32), ("fp16", False, torch.bfloat16),
    ("fp32", True, torch.bfloat16), ("fp16", True, torch.bfloat16)])
def test_fp32_precision_upcasts_q_k_v_only_where_sdpa_does_not_compute_scores_in_fp32(
        monkeypatch, precision, sdpa_upcasts, computed_dtype):
    monkeypatch.setattr(attention, "sdpa_scores_in_float32", lambda device: sdpa_upcasts)
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    layer = CrossAttention(32, heads=2, dim_head=16).to(torch.bfloat16)
    attention.set_attention_precision(layer, precision)
    out = layer(torch.randn(1, 6, 32, dtype=torch.bfloat16))
    assert seen == [(computed_dtype,) * 3]
    assert out.dtype == torch.bfloat16


def test_sdpa_computes_half_precision_scores_in_fp32_on_cpu_and_cuda_but_not_elsewhere(monkeypatch):
    assert attention.sdpa_scores_in_float32(torch.device("cpu"))
    assert not attention.sdpa_scores_in_float32(torch.device("mps"))
    monkeypatch.setattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", lambda: False)
    assert attention.sdpa_scores_in_float32(torch.device("cuda"))
    monkeypatch.setattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", lambda: True)
    assert not attention.sdpa_scores_in_float32(torch.device("cuda"))


@pytest.mark.parametrize("backend", ["default", "math", "flash"])
def test_fp16_attention_on_cpu_does_not_overflow_where_fp16_scores_would(backend):
    """The guarantee behind not upcasting on CPU: q·kᵀ of these inputs exceeds the float16 range,
    yet every SDPA backend returns what float64 attention on the same (rounded) inputs returns."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    generator = torch.Generator().manual_seed(0)
    q, k = ((torch.randn(1, 2, 64, 40, generator=generator) * 60).half() for _ in range(2))
    v = torch.randn(1, 2, 64, 40, generator=generator).half()
    assert not torch.isfinite(q @ k.transpose(-1, -2)).all()
    backends = {"default": None, "math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}
    with sdpa_kernel(backends[backend]) if backends[backend] else contextlib.nullcontext():
        out = attention.scaled_dot_product(q, k, v)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-2)


def test_attention_precision_rejects_unknown_values(monkeypatch):
    with pytest.raises(ValueError, match="'fp32' or 'fp16'"):
        attention.set_attention_precision(CrossAttention(32, heads=2, dim_head=16), "fp8")
    monkeypatch.setenv("ATTN_PRECISION", "fp64")
    with pytest.raises(ValueError, match="ATTN_PRECISION must be 'fp32' or 'fp16', got 'fp64'"):
        CrossAttention(32, heads=2, dim_head=16)


@pytest.mark.parametrize("env_value, expected", [("fp16", "fp16"), ("fp32", "fp32"), (None, "fp32")])
def test_attention_precision_is_read_from_the_environment_when_a_layer_is_built(monkeypatch, env_value, expected):
    if env_value is None:
        monkeypatch.delenv("ATTN_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ATTN_PRECISION", env_value)
    model = SpatialTransformer(32, 2, 16, depth=2, context_dim=24)
    assert attention.get_attention_precision(model) == expected
    assert {layer.attention_precision for layer in attention.attention_layers(model)} == {expected}


def test_the_original_environment_switch_works_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k != "ATTN_PRECISION"}
    env["ATTN_PRECISION"] = "fp16"
    code = ("from ldm.modules.attention import CrossAttention\n"
            "print(CrossAttention(32, heads=2, dim_head=16).attention_precision)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "fp16"


def _two_unets():
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    def unet(use_spatial_transformer):
        return UNetModel(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1,
                         attention_resolutions=[1], channel_mult=[1], num_heads=2,
                         use_spatial_transformer=use_spatial_transformer,
                         context_dim=24 if use_spatial_transformer else None)

    return unet(True), unet(False)


def test_settings_apply_to_every_attention_layer_of_one_model_and_to_no_other():
    text_unet, class_unet = _two_unets()
    kinds = {type(layer).__name__ for layer in attention.attention_layers(text_unet)}
    assert kinds == {"CrossAttention"}
    assert {type(layer).__name__ for layer in attention.attention_layers(class_unet)} == {"QKVAttentionLegacy"}
    assert attention.set_attention_slicing(text_unet, 4) == 8  # 4 transformers x (self + cross attention)
    assert attention.set_attention_precision(text_unet, "fp16") == 8
    assert attention.get_attention_slicing(text_unet) == 4
    assert attention.get_attention_precision(text_unet) == "fp16"
    assert attention.get_attention_slicing(class_unet) is None
    assert attention.get_attention_precision(class_unet) == "fp32"
    fresh = CrossAttention(32, heads=2, dim_head=16)
    assert (fresh.attention_slice_size, fresh.attention_precision) == (None, "fp32")


def test_a_sliced_model_gives_the_same_output_and_leaves_another_model_unsliced(monkeypatch):
    first, _ = _two_unets()
    second, _ = _two_unets()
    for p in first.parameters():
        torch.nn.init.normal_(p, std=0.05)
    second.load_state_dict(first.state_dict())
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 5, 24)
    expected = second(x, t, context)
    rows_seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        rows_seen.append(q.shape[-2])
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    attention.set_attention_slicing(first, 16)
    torch.testing.assert_close(first(x, t, context), expected, rtol=1e-5, atol=1e-5)
    assert set(rows_seen) == {16}
    rows_seen.clear()
    second(x, t, context)
    assert set(rows_seen) == {64}


def test_disagreeing_layers_are_reported_not_averaged():
    model = SpatialTransformer(32, 2, 16, context_dim=24)
    model.transformer_blocks[0].attn1.attention_slice_size = 8
    with pytest.raises(ValueError, match="differ in attention_slice_size"):
        attention.get_attention_slicing(model)
    assert attention.get_attention_slicing(torch.nn.Linear(2, 2)) is None


def test_memory_efficient_cross_attention_is_a_drop_in_for_cross_attention():
    plain = CrossAttention(32, context_dim=24, heads=2, dim_head=16).eval()
    efficient = MemoryEfficientCrossAttention(32, context_dim=24, heads=2, dim_head=16).eval()
    efficient.load_state_dict(plain.state_dict(), strict=True)
    x, context = torch.randn(1, 5, 32), torch.randn(1, 3, 24)
    torch.testing.assert_close(efficient(x, context), plain(x, context))


def test_geglu_gates_the_first_half_with_gelu_of_the_second():
    layer = GEGLU(8, 16)
    x = torch.randn(3, 8)
    a, b = layer.proj(x).split(16, dim=-1)
    torch.testing.assert_close(layer(x), a * F.gelu(b))


def test_feed_forward_keys_and_plain_gelu_variant():
    gated = FeedForward(32, glu=True)
    assert [(k, tuple(v.shape)) for k, v in gated.state_dict().items()] == [
        ("net.0.proj.weight", (256, 32)), ("net.0.proj.bias", (256,)),
        ("net.2.weight", (32, 128)), ("net.2.bias", (32,))]
    plain = FeedForward(32, dim_out=16, mult=2).eval()
    x = torch.randn(2, 32)
    torch.testing.assert_close(plain(x), plain.net[2](F.gelu(plain.net[0][0](x))))


def test_transformer_block_keys_in_original_order():
    block = BasicTransformerBlock(32, 2, 16, context_dim=24)
    top = list(dict.fromkeys(k.split(".")[0] for k in block.state_dict()))
    assert top == ["attn1", "ff", "attn2", "norm1", "norm2", "norm3"]
    assert block.attn1.to_k.weight.shape == (32, 32) and block.attn2.to_k.weight.shape == (32, 24)


def test_transformer_block_with_disabled_self_attention_attends_to_the_context():
    block = BasicTransformerBlock(32, 2, 16, context_dim=24, disable_self_attn=True, checkpoint=False).eval()
    x, context = torch.randn(1, 6, 32), torch.randn(1, 4, 24)
    assert block.attn1.to_k.weight.shape == (32, 24)
    h = block.attn1(block.norm1(x), context) + x
    h = block.attn2(block.norm2(h), context) + h
    torch.testing.assert_close(block(x, context), block.ff(block.norm3(h)) + h)


def _conv_and_linear_transformers(**kwargs):
    conv = SpatialTransformer(64, 2, 32, use_linear=False, **kwargs).eval()
    linear = SpatialTransformer(64, 2, 32, use_linear=True, **kwargs).eval()
    for p in conv.proj_out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    state = {k: (v.flatten(1) if k in ("proj_in.weight", "proj_out.weight") else v)
             for k, v in conv.state_dict().items()}
    linear.load_state_dict(state, strict=True)
    return conv, linear


def test_spatial_transformer_linear_and_conv_projections_agree():
    conv, linear = _conv_and_linear_transformers(context_dim=24, use_checkpoint=False)
    assert conv.proj_in.weight.shape == (64, 64, 1, 1) and linear.proj_in.weight.shape == (64, 64)
    x, context = torch.randn(2, 64, 4, 4), torch.randn(2, 5, 24)
    torch.testing.assert_close(linear(x, context), conv(x, context), rtol=1e-5, atol=1e-5)


def test_spatial_transformer_starts_as_identity():
    layer = SpatialTransformer(32, 2, 16, context_dim=24).eval()
    x = torch.randn(1, 32, 4, 4)
    torch.testing.assert_close(layer(x, torch.randn(1, 3, 24)), x)


def test_spatial_transformer_uses_groupnorm_eps_1e6_and_per_block_context_dims():
    layer = SpatialTransformer(32, 2, 16, depth=2, context_dim=[24, 40])
    assert layer.norm.eps == 1e-6 and layer.norm.num_groups == 32
    assert [b.attn2.to_k.weight.shape[1] for b in layer.transformer_blocks] == [24, 40]
    x = torch.randn(1, 32, 2, 2)
    for p in layer.proj_out.parameters():
        torch.nn.init.normal_(p)
    out = layer(x, [torch.randn(1, 3, 24), torch.randn(1, 5, 40)])
    assert out.shape == x.shape and not torch.equal(out, x)


def test_spatial_transformer_shares_a_single_context_across_depth():
    layer = SpatialTransformer(32, 2, 16, depth=2, context_dim=24, use_checkpoint=False).eval()
    x, context = torch.randn(1, 32, 2, 2), torch.randn(1, 3, 24)
    torch.testing.assert_close(layer(x, context), layer(x, [context, context]))


def test_spatial_transformer_rejects_a_context_dim_list_of_the_wrong_length():
    with pytest.raises(ValueError, match="one per transformer block"):
        SpatialTransformer(32, 2, 16, depth=3, context_dim=[24, 24])


def test_spatial_self_attention_equals_single_head_softmax_formula():
    layer = SpatialSelfAttention(32).eval()
    x = torch.randn(2, 32, 3, 3)
    h = layer.norm(x)
    q = layer.q(h).flatten(2).transpose(1, 2)
    k, v = layer.k(h).flatten(2), layer.v(h).flatten(2)
    weights = (torch.bmm(q, k) * 32 ** -0.5).softmax(dim=2)
    expected = x + layer.proj_out(torch.bmm(v, weights.transpose(1, 2)).reshape(2, 32, 3, 3))
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_linear_attention_normalises_keys_over_positions():
    layer = LinearAttention(16, heads=2, dim_head=8).eval()
    x = torch.randn(1, 16, 3, 3)
    q, k, v = layer.to_qkv(x).reshape(1, 3, 2, 8, 9).unbind(1)
    context = k.softmax(dim=-1) @ v.transpose(-1, -2)
    expected = layer.to_out((context.transpose(-1, -2) @ q).reshape(1, 16, 3, 3))
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
