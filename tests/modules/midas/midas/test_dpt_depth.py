"""DPTDepthModel: the original state-dict layouts (DPT-Hybrid as in the SD 2 depth checkpoint,
DPT-Large as in its MiDaS file), the numbers of transformers' DPTForDepthEstimation on the same
tensors, and loading a standalone MiDaS file."""
import pytest
import torch
from transformers import DPTForDepthEstimation

from ldm.modules.midas.midas.dpt_depth import DPTDepthModel
from ldm.modules.midas.transformers_dpt import to_transformers_dpt, transformers_dpt_config
from ldm.util import CheckpointError
from tests.manifests import layout_of, read_manifest
from tests.modules.midas.tiny import TINY_HYBRID, TINY_VIT, perturbed


def test_dpt_hybrid_has_the_layout_of_the_sd2_depth_checkpoint():
    with torch.device("meta"):
        model = DPTDepthModel(backbone="vitb_rn50_384", non_negative=True)
    expected = read_manifest("v2-midas-inference", prefix="depth_model.model.")
    assert len(expected) == 368
    assert layout_of(model) == expected


def test_dpt_large_has_the_layout_of_its_midas_file():
    """extras/midas-dpt_large.txt: written from the original code (timm vit_large_patch16_384 with
    its ImageNet head, DPT reassembly with project readout, four fusion blocks, depth head)."""
    with torch.device("meta"):
        model = DPTDepthModel(backbone="vitl16_384", non_negative=True)
    assert layout_of(model) == read_manifest("extras/midas-dpt_large")


def _twins(options, backbone):
    ours = perturbed(DPTDepthModel(backbone=backbone, **options))
    theirs = DPTForDepthEstimation(transformers_dpt_config(ours)).eval()
    theirs.load_state_dict(to_transformers_dpt(ours.state_dict(), hybrid=backbone == "vitb_rn50_384"), strict=True)
    return ours, theirs


def test_dpt_hybrid_predicts_what_transformers_dpt_hybrid_predicts():
    ours, theirs = _twins(TINY_HYBRID, "vitb_rn50_384")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        depth, reference = ours(x), theirs(pixel_values=x).predicted_depth
    assert depth.shape == (2, 64, 64) and depth.abs().max() > 0.01
    torch.testing.assert_close(depth, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


@pytest.mark.parametrize("size", [64, 96])
def test_dpt_large_predicts_what_transformers_dpt_predicts(size):
    """96: the position embedding of the 4 x 4 training grid resized to 6 x 6 as both do."""
    ours, theirs = _twins(TINY_VIT, "vitl16_384")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        depth, reference = ours(x), theirs(pixel_values=x).predicted_depth
    assert depth.shape == (1, size, size) and depth.abs().max() > 0.01
    torch.testing.assert_close(depth, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


def test_dpt_runs_inputs_of_any_multiple_of_32_and_refuses_others():
    model = DPTDepthModel(**TINY_HYBRID).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 128)).shape == (1, 64, 128)
        with pytest.raises(ValueError, match="multiples of 32.*48 x 64"):
            model(torch.randn(1, 3, 48, 64))
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            model(torch.randn(1, 1, 64, 64))


def test_dpt_without_non_negative_can_predict_negative_values():
    model = perturbed(DPTDepthModel(non_negative=False, **TINY_HYBRID), scale=0.2)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).min() < 0
    model = perturbed(DPTDepthModel(non_negative=True, **TINY_HYBRID), scale=0.2)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).min() >= 0


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_dpt_loads_a_standalone_midas_file_strictly(tmp_path, suffix):
    source = perturbed(DPTDepthModel(**TINY_HYBRID))
    path = tmp_path / f"dpt_hybrid-midas{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)  # as the MiDaS release: a bare state dict
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = DPTDepthModel(path=path, **TINY_HYBRID).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_dpt_refuses_a_file_of_another_layout_naming_the_keys(tmp_path):
    state = perturbed(DPTDepthModel(**TINY_HYBRID)).state_dict()
    state.pop("scratch.output_conv.4.bias")
    state["scratch.layer1_rn.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="scratch.output_conv.4.bias.*|scratch.layer1_rn.weight"):
        DPTDepthModel(path=tmp_path / "other.pt", **TINY_HYBRID)
    with pytest.raises(CheckpointError, match="not found"):
        DPTDepthModel(path=tmp_path / "missing.pt", **TINY_HYBRID)


def test_dpt_backbone_options_are_checked():
    with pytest.raises(TypeError, match="unknown backbone option.*'widht'"):
        DPTDepthModel(backbone_options={"widht": 3})
    with pytest.raises(ValueError, match="hooks must name 4 of the 4 transformer blocks"):
        DPTDepthModel(**{**TINY_HYBRID, "backbone_options": {**TINY_HYBRID["backbone_options"], "hooks": [0, 1, 2, 4]}})
    with pytest.raises(ValueError, match="DPT backbone must be one of"):
        DPTDepthModel(backbone="vitb_rn101_384")
