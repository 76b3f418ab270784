"""Patch-wise denoising and decoding (``split_input_params``): border-distance weights, patches cut
and stitched in the right places (a pixel-wise model gives the same result patch-wise as whole),
and the real model's UNet and VQ decoder run in patches."""
import pytest
import torch

from ldm.models.diffusion.patchwise import PatchwiseProcessing
from ldm.util import instantiate_from_config
from tests.tiny_configs import tiny_ldm_superres_config

PARAMS = {"ks": (8, 8), "stride": (4, 4), "vqf": 4, "patch_distributed_vq": True, "tie_braker": False,
          "clip_max_weight": 0.5, "clip_min_weight": 0.01, "clip_max_tie_weight": 0.5, "clip_min_tie_weight": 0.01}


class PixelwiseConcatModel(torch.nn.Module):
    """A stand-in for DiffusionWrapper in concat mode whose output at a pixel depends on that
    pixel only (and on the conditioning there), so patch-wise and whole results must agree."""
    conditioning_key = "concat"

    def forward(self, x, t, c_concat):
        return torch.tanh(2 * x + c_concat[0]) + t.view(-1, 1, 1, 1) / 1000


class Patchwise(PatchwiseProcessing):
    def __init__(self, **params):
        self.model = PixelwiseConcatModel()
        self.cond_stage_key = "LR_image"
        self.split_input_params = dict(PARAMS, **params)


def test_border_distance_is_zero_on_the_border_and_a_half_in_the_centre():
    distance = Patchwise().delta_border(5, 5)
    assert distance[0].eq(0).all() and distance[:, -1].eq(0).all()
    assert distance[2, 2] == 0.5 and distance[1, 2] == 0.25


def test_weights_are_the_clipped_border_distance_of_every_patch():
    weighting = Patchwise().get_weighting(5, 5, 2, 3, "cpu")
    assert weighting.shape == (1, 25, 6)
    assert weighting.min() == 0.01 and weighting.max() == 0.5
    tied = Patchwise(tie_braker=True).get_weighting(5, 5, 3, 3, "cpu")
    assert torch.allclose(tied[0, :, 4], weighting[0, :, 0] * 0.5)  # the middle patch of a 3x3 grid
    assert torch.allclose(tied[0, :, 0], weighting[0, :, 0] * 0.01)  # a corner patch


def test_a_pixelwise_model_gives_the_same_result_in_patches_as_whole():
    patchwise = Patchwise()
    x, low_res, t = torch.randn(2, 3, 16, 12), torch.randn(2, 3, 16, 12), torch.tensor([10, 900])
    whole = patchwise.model(x, t, [low_res])
    torch.testing.assert_close(patchwise.apply_model_in_patches(x, t, {"c_concat": [low_res]}), whole)


def test_each_pixel_is_the_weighted_mean_of_the_patches_covering_it():
    patchwise = Patchwise()
    calls = []

    def decode(patch):  # a constant image per patch: its index
        calls.append(patch)
        return torch.full((1, 1, 32, 32), float(len(calls) - 1))

    image = patchwise.decode_in_patches(torch.zeros(1, 3, 8, 12), decode)
    assert image.shape == (1, 1, 32, 48) and len(calls) == 2  # patches at columns 0 and 4
    assert image[0, 0, 16, 0] == 0 and image[0, 0, 16, -1] == 1  # covered by one patch only
    middle = image[0, 0, 16, 16:32]  # covered by both: rises from patch 0 to patch 1
    assert torch.all(middle[1:] >= middle[:-1]) and 0 < middle[8] < 1


def test_decoding_in_patches_shrinks_them_to_a_smaller_latent():
    patchwise = Patchwise(ks=(128, 128), stride=(64, 64))
    z = torch.randn(1, 3, 6, 10)
    upsample = torch.nn.Upsample(scale_factor=4)
    image = patchwise.decode_in_patches(z, lambda patch: upsample(patch) * 2)
    torch.testing.assert_close(image, upsample(z) * 2)


@pytest.mark.parametrize("size", [(7, 12), (16, 14)])
def test_a_latent_the_patches_do_not_tile_is_refused(size):
    with pytest.raises(ValueError, match="must be 8 plus a multiple of 4"):
        Patchwise().apply_model_in_patches(torch.zeros(1, 3, *size), torch.tensor([1]),
                                           {"c_concat": [torch.zeros(1, 3, *size)]})


def test_the_ldm_bsr_model_denoises_and_decodes_in_patches_once_they_are_set():
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_ldm_superres_config().model).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    x, low_res, t = torch.randn(1, 3, 16, 24), torch.rand(1, 3, 16, 24) * 2 - 1, torch.tensor([300])
    with torch.no_grad():
        whole_eps, whole_image = model.apply_model(x, t, low_res), model.decode_first_stage(x)
        model.split_input_params = dict(PARAMS, ks=(16, 16), stride=(8, 8))
        eps, image = model.apply_model(x, t, low_res), model.decode_first_stage(x)
        model.split_input_params["ks"] = (16, 24)  # one patch: exactly the whole
        torch.testing.assert_close(model.apply_model(x, t, low_res), whole_eps)
        torch.testing.assert_close(model.decode_first_stage(x), whole_image)
    assert eps.shape == whole_eps.shape and image.shape == whole_image.shape == (1, 3, 64, 96)
    assert 0 < (eps - whole_eps).abs().mean() < whole_eps.abs().mean()  # patches see less context
