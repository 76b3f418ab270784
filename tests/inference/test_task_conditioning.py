"""The tasks' conditioning, checked against the originals' formulas on tiny models: unCLIP's
``c_adm`` (the noise-augmented CLIP image embedding and its level's embedding; zeros for the
unconditional side, as the Stability demo)."""
import numpy as np
import pytest
import torch

import ldm
from ldm.inference.images import load_image
from ldm.modules.diffusionmodules.util import make_beta_schedule, timestep_embedding
from tests.scripts.helpers import write_test_image
from tests.tiny_configs import TINY_UNCLIP_EMBEDDING

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_unclip_conditions_on_the_noise_augmented_image_embedding_and_guides_against_zeros(tiny_unclip_models,
                                                                                             tmp_path):
    model_files = tiny_unclip_models["unclip-l"]
    pipe = ldm.load("unclip", ckpt=str(model_files.ckpt), config=str(model_files.config), device="cpu")
    unet = pipe.model.model.diffusion_model
    seen = []
    real_forward = unet.forward

    def recording_forward(x, timesteps=None, context=None, y=None, **kwargs):
        seen.append(y.detach().clone())
        return real_forward(x, timesteps, context=context, y=y, **kwargs)

    unet.forward = recording_forward
    image = write_test_image(tmp_path / "in.png", size=(36, 28), seed=4)
    pipe("", image=str(image), noise_level=300, seed=9, n=1, steps=2)

    with torch.no_grad():
        embedding = pipe.model.embedder(load_image(str(image), pipe.spec.pixel_multiple))[0]
    mean, std = torch.load(model_files.config.parent / "stats.th", weights_only=True)
    abar = torch.tensor(np.cumprod(1.0 - make_beta_schedule("squaredcos_cap_v2", 1000))[300], dtype=torch.float32)
    eps = torch.randn(TINY_UNCLIP_EMBEDDING, generator=torch.Generator().manual_seed(9))  # the image's first draw
    noised = (abar.sqrt() * (embedding - mean) / std + (1 - abar).sqrt() * eps) * std + mean
    expected = torch.cat([noised, timestep_embedding(torch.tensor([300]), TINY_UNCLIP_EMBEDDING)[0]])

    rows = torch.cat(seen)
    assert len(seen) == 2  # two steps
    conditional = rows[rows.abs().sum(1) > 0]
    assert len(conditional) == 2 and (rows.abs().sum(1) == 0).sum() == 2  # one guided pair per step
    for row in conditional:
        torch.testing.assert_close(row, expected, rtol=1e-4, atol=1e-5)
