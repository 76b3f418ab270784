"""ShapesDepthEstimator: the torch twin of the renderer's disparity rule."""
import numpy as np
import pytest
import torch

from ldm.data.shapes import estimate_disparity, render_scene, scene_for
from ldm.modules.shapes_depth import ShapesDepthEstimator


def test_estimates_the_rendered_disparity_from_the_image():
    render = render_scene(scene_for([("green", "star"), ("purple", "circle")], "below", seed=2))
    image = torch.from_numpy(2.0 * render.image - 1.0).permute(2, 0, 1)[None]
    depth = ShapesDepthEstimator()(image)
    assert depth.shape == (1, 1, 64, 64)
    assert np.mean(np.abs(depth[0, 0].numpy() - render.depth)) < 0.01
    np.testing.assert_allclose(depth[0, 0].numpy(), estimate_disparity(render.image), atol=1e-5)


def test_refuses_images_without_three_channels():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ShapesDepthEstimator()(torch.zeros(1, 1, 8, 8))
