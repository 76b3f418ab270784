"""The FID Inception-v3: layout of pytorch-fid's weights file, preprocessing, outputs and loading.
(Agreement with pytorch-fid on the same weights: benchmarks/inception_vs_pytorch_fid.py.)"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.evaluation.inception import (
    WEIGHTS_FILE,
    FIDInceptionV3,
    _tf_average_pool,
    inception_outputs,
    load_fid_inception,
    preprocess,
)
from tests.evaluation.inception_weights import save_random_fid_inception


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return save_random_fid_inception(tmp_path_factory.mktemp("inception") / WEIGHTS_FILE)


def test_the_network_has_the_layout_of_the_pytorch_fid_weights():
    state = FIDInceptionV3().state_dict()
    convs = [k for k in state if k.endswith("conv.weight")]
    assert len(convs) == 94 and sum(v.numel() for k, v in state.items() if "num_batches" not in k) == 23_885_392
    assert state["fc.weight"].shape == (1008, 2048) and state["Mixed_7c.branch_pool.conv.weight"].shape == (
        192, 2048, 1, 1)
    assert state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)


def test_preprocessing_maps_bytes_to_minus_one_one_and_resizes_bilinearly():
    images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    expected = F.interpolate(images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    torch.testing.assert_close(preprocess(images), expected)
    full = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(3 * 299 * 299 // 2 + 1)[:3 * 299 * 299]
    assert preprocess(full.reshape(1, 3, 299, 299)).unique().tolist() == [-1.0, 1.0]


def test_the_average_pools_leave_the_padding_out_as_tensorflow():
    pooled = _tf_average_pool(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(pooled, torch.ones(1, 1, 4, 4))


def test_loading_gives_the_saved_weights_and_outputs_pool_features_and_bias_free_logits(weights_file):
    model = load_fid_inception(str(weights_file))
    saved = torch.load(weights_file, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items()) and not model.training
    images = np.random.default_rng(0).integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)
    features, logits = inception_outputs(model, [images], 1)
    assert features.shape == (1, 2048) and logits.shape == (1, 1008) and features.dtype == np.float64
    np.testing.assert_allclose(logits, features @ saved["fc.weight"].double().numpy().T, rtol=1e-5, atol=1e-5)
    assert np.abs(saved["fc.bias"].numpy()).max() > 0   # the bias exists but is left out


def test_a_missing_weights_file_names_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_FILE}.*github.com/mseitzer/pytorch-fid"):
        load_fid_inception(str(tmp_path / "nowhere.pth"))
