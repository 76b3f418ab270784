"""The shared sampler helpers: thresholding, the one classifier-free-guidance wrapper and the
per-image noise draws."""
import pytest
import torch

from ldm.models.diffusion.sampling_util import (
    append_dims,
    concat_conditionings,
    guided_model_output,
    norm_thresholding,
    randn,
    spatial_norm_thresholding,
)


def test_append_dims_adds_trailing_singletons_and_rejects_fewer_dims():
    x = torch.arange(3.)
    assert append_dims(x, 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="target_dims"):
        append_dims(torch.zeros(2, 2, 2), 2)


def test_norm_thresholding_caps_per_sample_rms_and_keeps_small_samples():
    x0 = torch.stack([torch.full((4, 2, 2), 3.), torch.full((4, 2, 2), 0.5)])
    out = norm_thresholding(x0, 1.0)
    rms = out.pow(2).flatten(1).mean(1).sqrt()
    assert torch.allclose(rms, torch.tensor([1.0, 0.5]))
    assert torch.equal(out[1], x0[1])


def test_spatial_norm_thresholding_caps_rms_over_channels_per_pixel():
    x0 = torch.zeros(1, 4, 2, 2)
    x0[0, :, 0, 0] = 2.
    x0[0, :, 1, 1] = 0.25
    out = spatial_norm_thresholding(x0, 1.0)
    rms = out.pow(2).mean(1).sqrt()
    assert torch.allclose(rms[0, 0, 0], torch.tensor(1.0))
    assert torch.allclose(out[0, :, 1, 1], x0[0, :, 1, 1])


def test_concat_conditionings_puts_unconditional_first_for_every_kind():
    u, c = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(concat_conditionings(u, c), torch.cat([u, c]))
    assert torch.equal(concat_conditionings([u], [c])[0], torch.cat([u, c]))
    adm_u, adm_c = torch.zeros(2), torch.ones(2)
    out = concat_conditionings({"c_concat": [u], "c_crossattn": [u + 2], "c_adm": adm_u},
                               {"c_concat": [c], "c_crossattn": [c + 2], "c_adm": adm_c})
    assert torch.equal(out["c_concat"][0], torch.cat([u, c]))
    assert torch.equal(out["c_crossattn"][0], torch.cat([u + 2, c + 2]))
    assert torch.equal(out["c_adm"], torch.cat([adm_u, adm_c]))


def test_concat_conditionings_rejects_mismatched_kinds():
    with pytest.raises(ValueError, match="dict"):
        concat_conditionings(torch.zeros(1), {"c_crossattn": [torch.zeros(1)]})
    with pytest.raises(ValueError, match="list"):
        concat_conditionings(torch.zeros(1), [torch.zeros(1)])


class _RecordingModel:
    def __init__(self):
        self.batches = []

    def __call__(self, x, t, c):
        self.batches.append((x.shape[0], c))
        return x * 0 + c.reshape(-1, 1)


def test_guided_model_output_combines_one_doubled_batch():
    model = _RecordingModel()
    x, t = torch.zeros(2, 1), torch.zeros(2)
    u, c = torch.tensor([1., 2.]), torch.tensor([5., 10.])
    out = guided_model_output(model, x, t, c, u, 3.0)
    assert [b for b, _ in model.batches] == [4]
    assert torch.equal(model.batches[0][1], torch.cat([u, c]))
    assert torch.allclose(out[:, 0], u + 3.0 * (c - u))


@pytest.mark.parametrize("uc, scale", [(torch.tensor([1., 2.]), 1.0), (None, 7.5)])
def test_guided_model_output_runs_conditional_model_alone_without_guidance(uc, scale):
    model = _RecordingModel()
    c = torch.tensor([5., 10.])
    out = guided_model_output(model, torch.zeros(2, 1), torch.zeros(2), c, uc, scale)
    assert [b for b, _ in model.batches] == [2]
    assert torch.equal(out[:, 0], c)


def test_randn_with_one_generator_per_image_is_independent_of_batch_size():
    batch = randn((3, 2, 4), [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    single = randn((1, 2, 4), [torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1:2], single)
    assert not torch.equal(batch[0], batch[1])


def test_randn_without_generator_matches_torch_randn_stream():
    torch.manual_seed(7)
    ours = randn((2, 3))
    torch.manual_seed(7)
    assert torch.equal(ours, torch.randn(2, 3))


def test_randn_rejects_wrong_number_of_generators():
    with pytest.raises(ValueError, match="one generator per batch element"):
        randn((3, 2), [torch.Generator()] * 2)
