"""torchvision-named ResNet/ResNeXt: at cardinality 1 the same network as transformers' ResNet
(v1.5 bottlenecks) on the same tensors; ResNeXt-101 32x8d widths."""
import torch
from transformers import ResNetConfig, ResNetModel

from ldm.modules.midas.midas.backbones.resnext import ResNet, ResNeXtSpec
from tests.modules.midas.tiny import perturbed


def _transformers_names(state_dict):
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] in ("conv1", "bn1"):
            renamed[f"embedder.embedder.{'convolution' if parts[0] == 'conv1' else 'normalization'}.{parts[1]}"] = value
            continue
        stage, block, name, rest = int(parts[0][-1]) - 1, parts[1], parts[2], parts[3:]
        prefix = f"encoder.stages.{stage}.layers.{block}"
        if name == "downsample":
            kind = "convolution" if rest[0] == "0" else "normalization"
            renamed[f"{prefix}.shortcut.{kind}.{rest[1]}"] = value
        else:
            index, kind = int(name[-1]) - 1, "convolution" if name.startswith("conv") else "normalization"
            renamed[f"{prefix}.layer.{index}.{kind}.{rest[0]}"] = value
    return renamed


def test_resnet_matches_transformers_resnet_at_cardinality_one():
    ours = perturbed(ResNet(ResNeXtSpec(layers=(1, 2, 1, 1), groups=1, width_per_group=64, width=16)), scale=0.05)
    theirs = ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[1, 2, 1, 1],
                                      layer_type="bottleneck")).eval()
    theirs.load_state_dict(_transformers_names(ours.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).last_hidden_state, rtol=1e-4, atol=1e-5)


def test_resnext101_32x8d_has_grouped_bottlenecks_of_the_torchvision_widths():
    with torch.device("meta"):
        model = ResNet()
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert model.stage_channels == (256, 512, 1024, 2048)
    block = model.layer3[0]
    assert block.conv2.groups == 32 and tuple(block.conv2.weight.shape) == (1024, 32, 3, 3)
    assert tuple(block.conv1.weight.shape) == (1024, 512, 1, 1) and block.conv2.stride == (2, 2)
