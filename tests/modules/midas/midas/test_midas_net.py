"""MidasNet (MiDaS v2.1): the layout of its MiDaS file, and a forward pass."""
import torch

from ldm.modules.midas.midas.midas_net import MidasNet
from tests.manifests import layout_of, read_manifest
from tests.modules.midas.tiny import TINY_RESNEXT, perturbed


def test_midas_v21_has_the_layout_of_its_midas_file():
    """extras/midas-midas_v21.txt: written from the original code (torchvision ResNeXt-101 32x8d
    stem and stages as pretrained.layer1..4, scratch convolutions, refinenet4..1 in that order)."""
    with torch.device("meta"):
        model = MidasNet()
    assert layout_of(model) == read_manifest("extras/midas-midas_v21")


def test_midas_v21_predicts_non_negative_disparity_at_the_input_size():
    model = perturbed(MidasNet(**TINY_RESNEXT), scale=0.1)
    with torch.no_grad():
        depth = model(torch.randn(2, 3, 64, 96))
    assert depth.shape == (2, 64, 96) and depth.min() >= 0 and depth.max() > 0


def test_midas_v21_loads_its_file_without_batchnorm_step_counters(tmp_path):
    source = perturbed(MidasNet(**TINY_RESNEXT))
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "midas_v21.pt")
    loaded = MidasNet(tmp_path / "midas_v21.pt", **TINY_RESNEXT).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
