"""The timm-named ViT: position-embedding resizing and attention as their formulas say."""
import math

import torch
import torch.nn.functional as F

from ldm.modules.midas.midas.backbones.vision_transformer import Attention, VisionTransformer, ViTSpec, resize_pos_embed


def test_resize_pos_embed_keeps_the_class_token_and_is_identity_on_the_same_grid():
    pos = torch.randn(1, 1 + 16, 8)
    torch.testing.assert_close(resize_pos_embed(pos, 4, 4), pos)
    resized = resize_pos_embed(pos, 6, 2)
    assert resized.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(resized[:, :1], pos[:, :1])
    grid = pos[0, 1:].reshape(4, 4, 8).permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(6, 2), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized[0, 1:], expected[0].permute(1, 2, 0).reshape(12, 8))


def test_attention_is_softmax_of_scaled_dot_products():
    attention = Attention(8, num_heads=2)
    x = torch.randn(2, 5, 8)
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attention(x), expected)


def test_forward_flex_taps_block_outputs_before_the_final_norm():
    model = VisionTransformer(ViTSpec(embed_dim=16, depth=3, num_heads=2, img_size=32)).eval()
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        normed, stages, (tap0, tap2) = model.forward_flex(x, taps=[0, 2])
    assert stages == [] and tap0.shape == (1, 1 + 3 * 2, 16)
    torch.testing.assert_close(normed, model.norm(tap2))
