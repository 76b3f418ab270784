"""The vector quantizer: nearest-code choice, straight-through gradients, the (legacy) loss,
index shapes and remapping."""
import numpy as np
import pytest
import torch

from ldm.modules.vqvae.quantize import VectorQuantizer, VectorQuantizer2


def _quantizer(n_e=16, e_dim=4, **kwargs):
    vq = VectorQuantizer(n_e, e_dim, **kwargs)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(n_e, e_dim))
    return vq


def test_codebook_is_an_embedding_initialised_in_plus_minus_one_over_n():
    vq = VectorQuantizer(64, 3)
    assert list(vq.state_dict()) == ["embedding.weight"]
    assert vq.embedding.weight.shape == (64, 3)
    assert vq.embedding.weight.abs().max() <= 1 / 64
    assert VectorQuantizer2 is VectorQuantizer


def test_each_vector_is_replaced_by_its_nearest_code():
    vq = _quantizer()
    z = torch.randn(2, 4, 3, 5)
    z_q, _, (perplexity, min_encodings, indices) = vq(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute_force = torch.cdist(vectors, vq.embedding.weight).argmin(dim=1)
    assert torch.equal(indices, brute_force)
    expected = vq.embedding.weight[brute_force].reshape(2, 3, 5, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, expected)
    assert perplexity is None and min_encodings is None


def test_gradient_passes_straight_through_to_the_input():
    vq = _quantizer()
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    upstream = torch.randn(1, 4, 2, 2)
    z_q, _, _ = vq(z)
    (z_q * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)
    assert vq.embedding.weight.grad is None


@pytest.mark.parametrize("legacy", [True, False])
def test_loss_weights_codebook_and_commitment_terms_as_taming(legacy):
    vq = _quantizer(beta=0.25, legacy=legacy)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    _, loss, (_, _, indices) = vq(z)
    loss.backward()
    codes = vq.embedding.weight.detach()[indices].reshape(2, 3, 3, 4).permute(0, 3, 1, 2)
    mse = torch.mean((codes - z.detach()) ** 2)
    torch.testing.assert_close(loss, mse * 1.25)
    # d loss / d z comes from the commitment term only: weight 1 if legacy else beta
    commitment_weight = 1.0 if legacy else 0.25
    torch.testing.assert_close(z.grad, commitment_weight * 2 * (z.detach() - codes) / z.numel())
    codebook_weight = 0.25 if legacy else 1.0
    assert vq.embedding.weight.grad.abs().sum() > 0
    grad_of_used = torch.zeros_like(vq.embedding.weight)
    grad_of_used.index_add_(0, indices, codebook_weight * 2 * (codes - z.detach()).permute(0, 2, 3, 1).reshape(-1, 4) / z.numel())
    torch.testing.assert_close(vq.embedding.weight.grad, grad_of_used)


def test_sane_index_shape_returns_batch_height_width_indices():
    z = torch.randn(2, 4, 3, 5)
    _, _, (_, _, indices) = _quantizer(sane_index_shape=True)(z)
    assert indices.shape == (2, 3, 5)


def test_codebook_entry_round_trips_the_indices():
    vq = _quantizer()
    z = torch.randn(2, 4, 3, 5)
    z_q, _, (_, _, indices) = vq(z)
    torch.testing.assert_close(vq.get_codebook_entry(indices, (2, 3, 5, 4)), z_q)


def test_remap_reports_indices_in_the_used_subset(tmp_path):
    vq0 = _quantizer()
    used = np.array([3, 7, 11])
    np.save(tmp_path / "used.npy", used)
    vq = VectorQuantizer(16, 4, remap=str(tmp_path / "used.npy"), unknown_index="extra")
    vq.embedding.weight.data.copy_(vq0.embedding.weight.data)
    assert vq.re_embed == 4 and vq.unknown_index == 3
    assert "used" in vq.state_dict()
    z = vq0.embedding.weight[[7, 3, 5, 11]].reshape(1, 2, 2, 4).permute(0, 3, 1, 2).contiguous()
    _, _, (_, _, indices) = vq(z)
    assert indices.flatten().tolist() == [1, 0, 3, 2]   # code 5 is not in the used set -> "extra"
    back = vq.get_codebook_entry(indices.flatten(), (1, 2, 2, 4))
    torch.testing.assert_close(back[0, :, 0, 0], vq0.embedding.weight[7])


def test_gumbel_only_arguments_are_refused():
    with pytest.raises(ValueError, match="Gumbel"):
        _quantizer()(torch.randn(1, 4, 2, 2), temp=0.5)


def test_codes_are_chosen_in_float32_under_autocast():
    """The LDM-VQ-4 codebook (8192 x 3) has many near-ties; half precision would flip them."""
    vq = _quantizer(n_e=8192, e_dim=3)
    z = torch.randn(2, 3, 16, 16) * 2
    with torch.no_grad():
        full = vq(z)[2][2]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, _, (_, _, autocast) = vq(z)
    assert torch.equal(autocast, full)
