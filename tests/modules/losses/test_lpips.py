"""LPIPS: taming layout, the properties of its formula, and loading weights only from local files."""
import pytest
import torch

from ldm.modules.losses import lpips as lpips_module
from ldm.modules.losses.lpips import LPIPS, LPIPSWeightsError, load_lpips_weights, perceptual_loss_or_none


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = LPIPS().eval()
    with torch.no_grad():  # trained LPIPS heads are non-negative; random ones need not be
        for k in range(5):
            getattr(model, f"lin{k}").model[1].weight.abs_()
    return model


def test_lpips_has_the_taming_layout(net):
    keys = list(net.state_dict())
    assert keys[:4] == ["scaling_layer.shift", "scaling_layer.scale", "net.slice1.0.weight", "net.slice1.0.bias"]
    assert "net.slice2.5.weight" in keys and "net.slice5.28.weight" in keys
    assert [k for k in keys if k.startswith("lin")] == [f"lin{k}.model.1.weight" for k in range(5)]
    # VGG16 convolutions up to conv5_3 plus the 64+128+256+512+512 linear head weights
    assert sum(p.numel() for p in net.parameters()) == 14_714_688 + 1472
    assert not any(p.requires_grad for p in net.parameters())


def test_lpips_is_zero_for_identical_images_and_positive_otherwise(net):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(x, x), torch.zeros(2, 1, 1, 1))
        d = net(x, x.flip(-1))
    assert d.shape == (2, 1, 1, 1) and torch.all(d > 0)


def test_lpips_is_linear_in_its_head_weights(net):
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        base = net(x, y)
        saved = [getattr(net, f"lin{k}").model[1].weight.clone() for k in range(5)]
        for k in range(5):
            getattr(net, f"lin{k}").model[1].weight.mul_(2.0)
        doubled = net(x, y)
        for k in range(5):
            getattr(net, f"lin{k}").model[1].weight.copy_(saved[k])
    assert torch.allclose(doubled, 2 * base, rtol=1e-5)


def _lin_and_vgg_files(tmp_path, net):
    """LPIPS' vgg.pth (lin layers) and a torchvision-style VGG16 file (features.<i>.*)."""
    state = net.state_dict()
    lins = {k: torch.randn_like(v) for k, v in state.items() if k.startswith("lin")}
    vgg = {}
    for key, value in state.items():
        if key.startswith("net.slice"):
            index, kind = key.split(".")[2:]
            vgg[f"features.{index}.{kind}"] = torch.randn_like(value)
    vgg["classifier.0.weight"] = torch.randn(4, 4)  # torchvision files also hold the classifier
    folder = tmp_path / "lpips"
    folder.mkdir()
    torch.save(lins, folder / "vgg.pth")
    torch.save(vgg, folder / "vgg16-397923af.pth")
    return folder, lins, vgg


def test_weights_load_from_a_folder_with_vgg_pth_and_torchvision_vgg16(tmp_path, net):
    folder, lins, vgg = _lin_and_vgg_files(tmp_path, net)
    loaded = LPIPS(weights_path=str(folder))
    assert torch.equal(loaded.lin3.model[1].weight, lins["lin3.model.1.weight"])
    assert torch.equal(getattr(loaded.net.slice3, "12").weight, vgg["features.12.weight"])
    assert torch.equal(getattr(loaded.net.slice5, "28").bias, vgg["features.28.bias"])


def test_weights_inside_an_autoencoder_training_checkpoint_are_found(tmp_path, net):
    wrapped = {"state_dict": {f"loss.perceptual_loss.{k}": v + 1 for k, v in net.state_dict().items()}}
    path = tmp_path / "kl-f8-train.ckpt"
    torch.save(wrapped, path)
    loaded = LPIPS(weights_path=str(path))
    assert torch.equal(loaded.lin0.model[1].weight, net.lin0.model[1].weight + 1)


def test_incomplete_weights_are_refused_with_what_is_missing(tmp_path, net):
    folder, _, _ = _lin_and_vgg_files(tmp_path, net)
    (folder / "vgg16-397923af.pth").unlink()
    with pytest.raises(LPIPSWeightsError, match=r"lacks 26 LPIPS tensors \(e.g. net.slice1.0.bias\)"):
        load_lpips_weights(LPIPS(), str(folder))


def test_a_weights_path_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_LPIPS_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(LPIPSWeightsError, match="LPIPS weights not found at"):
        perceptual_loss_or_none(1.0)


def test_without_weights_the_perceptual_term_is_dropped_with_one_warning(monkeypatch):
    monkeypatch.delenv("LDM_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setattr(lpips_module, "_warned_without_lpips", False)
    with pytest.warns(UserWarning, match="training WITHOUT the perceptual loss") as record:
        assert perceptual_loss_or_none(1.0) == (None, 0.0)
        assert perceptual_loss_or_none(0.5) == (None, 0.0)
    assert len(record) == 1
    assert perceptual_loss_or_none(0.0) == (None, 0.0)


def test_env_var_weights_build_a_loaded_lpips(tmp_path, monkeypatch, net):
    folder, lins, _ = _lin_and_vgg_files(tmp_path, net)
    monkeypatch.setenv("LDM_LPIPS_WEIGHTS", str(folder))
    module, weight = perceptual_loss_or_none(0.7)
    assert weight == 0.7 and not module.training
    assert torch.equal(module.lin1.model[1].weight, lins["lin1.model.1.weight"])
