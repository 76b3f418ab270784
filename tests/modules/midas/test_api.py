"""ldm.modules.midas.api: MiDaSInference as SD 2's depth_stage_config builds it, its forward
(disparity at the input size, no gradients, always in eval mode), weights from a local file or
said to be random, and load_midas_transform's settings per model type."""
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.midas import api
from ldm.modules.midas.api import MiDaSInference, load_midas_transform, transform_images
from ldm.util import instantiate_from_config
from tests.manifests import MANIFEST_CONFIGS, REPO_ROOT, layout_of, read_manifest
from tests.modules.midas.tiny import TINY_HYBRID, perturbed

pytestmark = pytest.mark.filterwarnings("ignore:MiDaS .* built with random weights")


def test_sd2_depth_stage_config_builds_the_checkpoints_depth_model_layout():
    config = OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS["v2-midas-inference"]).model.params.depth_stage_config
    assert config.target == "ldm.modules.midas.api.MiDaSInference" and config.params.model_type == "dpt_hybrid"
    with torch.device("meta"):
        model = instantiate_from_config(config)
    assert layout_of(model) == read_manifest("v2-midas-inference", prefix="depth_model.")


def test_forward_gives_disparity_at_the_input_size_without_gradients():
    midas = MiDaSInference("dpt_hybrid", **TINY_HYBRID)
    perturbed(midas.model)
    x = (torch.rand(2, 3, 64, 96) * 2 - 1).requires_grad_()
    depth = midas(x)
    assert depth.shape == (2, 1, 64, 96) and not depth.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(depth, midas.model(x)[:, None])  # the head already predicts at input size


def test_forward_resizes_the_prediction_bicubically_to_the_input():
    class HalfSize(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, ::2, ::2]

    midas = MiDaSInference("dpt_hybrid", **TINY_HYBRID)
    midas.model = HalfSize()
    x = torch.randn(1, 3, 64, 64)
    expected = torch.nn.functional.interpolate(x[:, :1, ::2, ::2], size=(64, 64), mode="bicubic", align_corners=False)
    torch.testing.assert_close(midas(x), expected)


def test_the_network_stays_in_eval_mode():
    midas = MiDaSInference("dpt_hybrid", **TINY_HYBRID)
    midas.train()
    assert not midas.model.training


def test_random_weights_are_said_once_per_model_type_when_used(monkeypatch):
    monkeypatch.setattr(api, "_said_random", set())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        midas = MiDaSInference("dpt_hybrid", **TINY_HYBRID)  # a checkpoint may still bring the weights
    with pytest.warns(UserWarning, match="dpt_hybrid runs with random weights.*dpt_hybrid-midas-501f0c75.pt.*nothing"):
        midas(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        midas(x)
        MiDaSInference("dpt_hybrid", **TINY_HYBRID)(x)


def test_weights_from_a_state_dict_silence_the_random_weights_warning(monkeypatch):
    monkeypatch.setattr(api, "_said_random", set())
    midas = MiDaSInference("dpt_hybrid", **TINY_HYBRID)
    midas.load_state_dict(MiDaSInference("dpt_hybrid", **TINY_HYBRID).state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        midas(torch.rand(1, 3, 64, 64) * 2 - 1)


def test_weights_load_from_a_local_midas_file(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "_said_random", set())
    source = perturbed(MiDaSInference("dpt_hybrid", **TINY_HYBRID).model)
    torch.save(source.state_dict(), tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    monkeypatch.setattr(api, "_said_random", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        midas = MiDaSInference("dpt_hybrid", path=tmp_path / "dpt_hybrid-midas-501f0c75.pt", **TINY_HYBRID)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(midas.model.state_dict()[key], value, rtol=0, atol=0)


def test_unknown_model_types_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="dpt_large.*dpt_hybrid.*midas_v21.*midas_v21_small.*'DPT_Hybrid'"):
        MiDaSInference("DPT_Hybrid")
    with pytest.raises(ValueError, match="model_type"):
        load_midas_transform("dpt")


@pytest.mark.parametrize("model_type,shape,mean,std", [
    ("dpt_hybrid", (3, 384, 576), 0.5, 0.5),
    ("dpt_large", (3, 384, 576), 0.5, 0.5),
    ("midas_v21", (3, 256, 384), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("midas_v21_small", (3, 160, 256), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])
def test_transform_of_each_model_type(model_type, shape, mean, std):
    image = np.full((512, 768, 3), 0.25, dtype=np.float32)
    out = load_midas_transform(model_type)({"image": image})["image"]
    assert out.shape == shape and out.dtype == np.float32
    expected = (0.25 - np.broadcast_to(mean, 3)) / np.broadcast_to(std, 3)
    np.testing.assert_allclose(out[:, 100, 100], expected, rtol=1e-5)


def test_an_sd2_depth_batch_runs_from_image_to_depth():
    """As SD 2 does it: an HWC image in [-1, 1] -> [0, 1] -> the DPT transform (back to [-1, 1],
    384-ish, CHW) -> MiDaSInference -> (B, 1, h, w) disparity."""
    ramp = torch.linspace(-1, 1, 96)[:, None, None]
    image = ramp.expand(96, 64, 3)  # smooth, so bicubic upsampling barely overshoots
    midas_in = load_midas_transform("dpt_hybrid")({"image": ((image + 1) * 0.5).numpy()})["image"]
    assert midas_in.shape == (3, 384, 256) and midas_in.min() >= -1.01 and midas_in.max() <= 1.01
    np.testing.assert_allclose(midas_in[0, :, 0], np.linspace(-1, 1, 384), atol=0.02)
    midas = MiDaSInference("dpt_hybrid", **TINY_HYBRID)
    depth = midas(torch.from_numpy(midas_in)[None])
    assert depth.shape == (1, 1, 384, 256) and torch.isfinite(depth).all()
    torch.testing.assert_close(midas.transform_images(image.permute(2, 0, 1)[None]), torch.from_numpy(midas_in)[None],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["dpt_hybrid", "midas_v21_small"])
def test_transform_images_prepares_a_batch_as_the_per_image_transform(model_type):
    images = torch.rand(2, 3, 80, 120) * 2 - 1
    batch = transform_images(images, model_type)
    transform = load_midas_transform(model_type)
    expected = np.stack([transform({"image": ((image.permute(1, 2, 0) + 1) * 0.5).numpy()})["image"]
                         for image in images])
    assert batch.shape == expected.shape and batch.dtype == torch.float32
    np.testing.assert_allclose(batch.numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        transform_images(images[:, :1], model_type)
