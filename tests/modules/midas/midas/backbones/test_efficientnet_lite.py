"""EfficientNet-Lite3 as gen-efficientnet builds it: stage repeats and widths, strides, residuals."""
import torch

from ldm.modules.midas.midas.backbones.efficientnet_lite import (
    EFFICIENTNET_LITE_STAGES,
    DepthwiseSeparableConv,
    InvertedResidual,
    scaled_repeats,
    tf_efficientnet_lite3,
)


def test_lite3_scales_depth_by_1_4_except_first_and_last_stage_and_widths_by_1_2():
    assert scaled_repeats(EFFICIENTNET_LITE_STAGES, 1.4) == [1, 3, 3, 5, 5, 6, 1]
    model = tf_efficientnet_lite3()
    assert model.stage_channels == [24, 32, 48, 96, 136, 232, 384]
    assert [len(stage) for stage in model.blocks] == [1, 3, 3, 5, 5, 6, 1]
    assert model.conv_stem.out_channels == 32 and model.bn1.eps == 1e-3


def test_lite3_features_are_at_the_strides_midas_taps():
    model = tf_efficientnet_lite3().eval()
    x = torch.randn(1, 3, 64, 96)
    shapes = []
    with torch.no_grad():
        x = model.act1(model.bn1(model.conv_stem(x)))
        for stage in model.blocks:
            x = stage(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes[1] == (32, 16, 24) and shapes[2] == (48, 8, 12)
    assert shapes[4] == (136, 4, 6) and shapes[6] == (384, 2, 3)


def test_blocks_keep_a_residual_only_where_the_shape_is_kept():
    assert not DepthwiseSeparableConv(32, 24, 3, 1).has_residual
    assert DepthwiseSeparableConv(24, 24, 3, 1).has_residual
    block = InvertedResidual(32, 32, 5, 1, 6).eval()
    assert block.has_residual and not InvertedResidual(32, 32, 3, 2, 6).has_residual
    with torch.no_grad():
        block.bn3.weight.zero_()
        block.bn3.bias.zero_()
        x = torch.randn(1, 32, 8, 8)
        torch.testing.assert_close(block(x), x)  # the branch is zero: only the skip remains
    assert block.conv_pw.out_channels == 192 and block.conv_dw.groups == 192
