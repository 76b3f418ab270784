"""MidasNet_small (MiDaS v2.1 small): the layout of its MiDaS file, and a forward pass."""
import pytest
import torch

from ldm.modules.midas.midas.midas_net_custom import MidasNet_small
from tests.manifests import layout_of, read_manifest
from tests.modules.midas.tiny import perturbed


def test_midas_v21_small_has_the_layout_of_its_midas_file():
    """extras/midas-midas_v21_small.txt: written from the original code (gen-efficientnet
    tf_efficientnet_lite3 stem and blocks as pretrained.layer1..4, expanding scratch widths
    64/128/256/512, refinenet4..1 halving them)."""
    with torch.device("meta"):
        model = MidasNet_small(None, features=64, backbone="efficientnet_lite3", exportable=True,
                               non_negative=True, blocks={"expand": True})
    assert layout_of(model) == read_manifest("extras/midas-midas_v21_small")


def test_midas_v21_small_predicts_non_negative_disparity_at_the_input_size():
    model = perturbed(MidasNet_small(features=64), scale=0.05)
    with torch.no_grad():
        depth = model(torch.randn(1, 3, 64, 96))
    assert depth.shape == (1, 64, 96) and depth.min() >= 0 and depth.max() > 0


def test_midas_v21_small_has_only_an_efficientnet_backbone():
    with pytest.raises(ValueError, match="efficientnet_lite3"):
        MidasNet_small(backbone="mobilenet")
