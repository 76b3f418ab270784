"""Loss-guidance presets: the colour loss pulls samples toward the target colour."""
import pytest
import torch

from ldm.inference.guidance import color_guidance
from ldm.models.diffusion.samplers import get_sampler
from tests.models.diffusion.gaussian_analytic import GaussianDataModel


def test_color_guidance_pulls_each_channel_toward_the_target():
    """On a pixel-space Gaussian model (x0 is the image in [-1, 1]), guiding toward blue
    raises the blue channel and lowers red and green, for an eps and a v model alike."""
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for parameterization in ("eps", "v"):
        model = GaussianDataModel(data_std=0.5, parameterization=parameterization, interpolation="log_sigma")
        plain = get_sampler("euler", model).sample(20, 2, (3, 4, 4), None, x_T=x_T, verbose=False)[0]
        guided = get_sampler("euler", model).sample(20, 2, (3, 4, 4), None, x_T=x_T, verbose=False,
                                                    cond_fn=color_guidance(model, (0., 0., 1.), 2.))[0]
        shift = (guided - plain).mean((0, 2, 3))
        assert shift[2] > 0.05 and shift[0] < -0.05 and shift[1] < -0.05


def test_color_guidance_refuses_a_bad_colour():
    with pytest.raises(ValueError, match="three numbers in \\[0, 1\\]"):
        color_guidance(GaussianDataModel(), (0., 255., 0.), 1.)
