"""The fusion blocks against the original's code as released (MiDaS v2.1's residual unit applies
its ReLU in place, so its skip connection adds relu(x); DPT's does not)."""
import torch
import torch.nn as nn

from ldm.modules.midas.midas.blocks import FeatureFusionBlock, FeatureFusionBlock_custom, _make_scratch
from tests.modules.midas.tiny import perturbed


class ReleasedResidualConvUnit(nn.Module):
    """MiDaS v2.1 ``ResidualConvUnit`` written as released (in-place ReLU)."""

    def __init__(self, features):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(x)
        out = self.conv1(out)
        out = self.relu(out)
        out = self.conv2(out)
        return out + x


class ReleasedFeatureFusionBlock(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.resConfUnit1 = ReleasedResidualConvUnit(features)
        self.resConfUnit2 = ReleasedResidualConvUnit(features)

    def forward(self, *xs):
        output = xs[0]
        if len(xs) == 2:
            output += self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        return nn.functional.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)


def test_v21_fusion_block_computes_what_the_released_in_place_code_computes():
    ours = perturbed(FeatureFusionBlock(4), scale=0.3)
    released = ReleasedFeatureFusionBlock(4)
    released.load_state_dict(ours.state_dict())
    a, b = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = released(a.clone(), b.clone())
        torch.testing.assert_close(ours(a, b), expected)
        torch.testing.assert_close(ours(a), released(a.clone()))


def test_dpt_fusion_block_adds_the_unactivated_input():
    block = perturbed(FeatureFusionBlock_custom(4, nn.ReLU(False)), scale=0.3)
    unit = block.resConfUnit2
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        expected = unit.conv2(torch.relu(unit.conv1(torch.relu(x)))) + x
        torch.testing.assert_close(unit(x), expected)
        assert block(x).shape == (1, 4, 10, 10)


def test_scratch_expands_widths_x1_x2_x4_x8():
    scratch = _make_scratch([32, 48, 136, 384], 64, expand=True)
    assert [getattr(scratch, f"layer{i}_rn").out_channels for i in range(1, 5)] == [64, 128, 256, 512]
    assert scratch.layer1_rn.bias is None
