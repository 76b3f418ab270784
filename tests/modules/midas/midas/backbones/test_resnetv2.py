"""The ViT-hybrid ResNet against transformers' BiT backbone (the same architecture, written
independently) on the same tensors, at input sizes that need asymmetric "SAME" padding."""
import pytest
import torch
from transformers import BitBackbone, BitConfig

from ldm.modules.midas.midas.backbones.resnetv2 import ResNetV2, StdConv2dSame, make_div
from tests.modules.midas.tiny import perturbed


def _bit_names(state_dict):
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace("stem.conv.", "bit.embedder.convolution.").replace("stem.norm.", "bit.embedder.norm.")
        key = key.replace("stages.", "bit.encoder.stages.").replace(".blocks.", ".layers.")
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("height,width", [(64, 64), (50, 70)])
def test_stage_outputs_match_transformers_bit(height, width):
    ours = perturbed(ResNetV2(layers=(1, 2, 1), widths=(128, 128, 256), stem_width=32), scale=0.05)
    config = BitConfig(embedding_size=32, hidden_sizes=[128, 128, 256], depths=[1, 2, 1], global_padding="same",
                       layer_type="bottleneck", embedding_dynamic_padding=True,
                       out_features=["stage1", "stage2", "stage3"])
    theirs = BitBackbone(config).eval()
    theirs.load_state_dict(_bit_names(ours.state_dict()), strict=True)
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        stages, reference = ours.forward_stages(x), theirs(x).feature_maps
    assert [s.shape[1:] for s in stages] == [(128, -(-height // 4), -(-width // 4)),
                                             (128, -(-height // 8), -(-width // 8)),
                                             (256, -(-height // 16), -(-width // 16))]
    for ours_stage, their_stage in zip(stages, reference):
        torch.testing.assert_close(ours_stage, their_stage, rtol=1e-4, atol=1e-5)


def test_standardized_weight_has_zero_mean_and_unit_variance_per_output_channel():
    conv = StdConv2dSame(4, 6, 3)
    with torch.no_grad():
        conv.weight.mul_(5.0).add_(2.0)
    weight = conv.standardized_weight()
    torch.testing.assert_close(weight.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(weight.var(dim=(1, 2, 3), unbiased=False), torch.ones(6), atol=1e-5, rtol=0)


def test_make_div_rounds_to_multiples_of_8_never_10_percent_down():
    assert [make_div(v) for v in (64, 19.2, 28.8, 134.4, 230.4, 4)] == [64, 24, 32, 136, 232, 8]


def test_stage_widths_must_match_stage_count():
    with pytest.raises(ValueError, match="one width per stage"):
        ResNetV2(layers=(1, 1), widths=(128,))


def test_half_precision_weights_are_standardized_in_float32():
    conv = StdConv2dSame(4, 6, 3)
    reference = conv.standardized_weight()
    conv.half()
    weight = conv.standardized_weight()
    assert weight.dtype == torch.float16 and torch.isfinite(weight).all()
    torch.testing.assert_close(weight.float(), reference, atol=2e-3, rtol=2e-3)
