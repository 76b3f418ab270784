"""Colour guidance in the latent space (ldm.inference.latent_color_guidance): the object read from a latent,
the pull along the guide colour's latent vector on the object only, and that vector from the first stage."""
import torch

from ldm.inference.guidance import loss_guidance
from ldm.inference.latent_color_guidance import (
    guide_color_latent,
    latent_color_loss,
    layout_loss,
    layout_target,
    read_object,
)
from tests.inference import synthetic_latents

BACKGROUND = torch.tensor([0.3, -0.1, 0.2, 0.0])
OBJECT = torch.tensor([1.0, 0.5, -0.5, 0.2])
GUIDE = torch.tensor([-0.6, 0.1, 0.8, 0.4])


def latent_with_object(share):
    return synthetic_latents.latent_with_object(BACKGROUND, OBJECT, share)


def object_share():
    """A 7 x 7 object on 16 x 16 (more than the 15% most deviant pixels, so those are all fully covered)
    with a partly covered column on its right."""
    share = torch.zeros(16, 16)
    share[3:10, 3:10] = 1.0
    share[3:10, 10] = 0.5
    return share


def test_the_object_is_read_as_background_plus_a_share_of_its_colour():
    background, share = read_object(latent_with_object(object_share()))
    assert torch.allclose(background.flatten(), BACKGROUND)
    assert torch.allclose(share[0, 0], object_share(), atol=1e-6)


def test_the_loss_pulls_the_object_toward_the_guide_colour_in_place_and_leaves_the_background():
    latent = latent_with_object(object_share()).requires_grad_(True)
    loss = latent_color_loss(GUIDE, 1.0, "object")(latent)
    gradient, = torch.autograd.grad(loss, latent)
    step = latent.detach() - 10.0 * gradient
    share = object_share()
    assert torch.equal(step[0][:, share == 0], latent.detach()[0][:, share == 0])
    # inside, the step goes along GUIDE - OBJECT: toward background + share * GUIDE
    moved = (step - latent.detach())[0][:, share == 1]
    direction = (GUIDE - OBJECT) / (GUIDE - OBJECT).norm()
    assert torch.allclose(moved / moved.norm(dim=0), direction[:, None].expand_as(moved), atol=1e-5)
    assert float(latent_color_loss(GUIDE, 1.0, "object")(latent_with_object(share))) > 0
    recoloured = BACKGROUND[:, None, None] + share[None] * GUIDE[:, None, None]
    assert float(latent_color_loss(GUIDE, 1.0, "object")(recoloured[None])) < 1e-10


def test_the_image_region_weighs_every_pixel():
    latent = latent_with_object(object_share())
    latent[0, :, 14, 14] += 0.3  # a background pixel off the median: pulled only with the image region
    assert latent_color_loss(GUIDE, 1.0, "image")(latent) > latent_color_loss(GUIDE, 1.0, "object")(latent)


def test_its_guidance_is_minus_the_gradient_with_respect_to_x():
    x = torch.randn(1, 4, 16, 16, requires_grad=True)
    denoised = 2 * x + latent_with_object(object_share())
    loss = latent_color_loss(GUIDE, 3.0, "object")
    expected, = torch.autograd.grad(loss(denoised), x, retain_graph=True)
    assert torch.allclose(loss_guidance(loss)(x, torch.tensor([500]), denoised), -expected)


def test_a_pixel_model_guides_toward_the_colour_itself():
    pixel_model = torch.nn.Conv2d(3, 3, 1)  # no first stage: the latent is the image
    assert torch.allclose(guide_color_latent(pixel_model, (1.0, 0.5, 0.0)), torch.tensor([1.0, 0.0, -1.0]))


def test_a_latent_model_encodes_a_swatch(tiny_models):
    model = tiny_models["txt2img"].load().model
    vector = guide_color_latent(model, (40 / 255, 85 / 255, 220 / 255))
    assert vector.shape == (model.first_stage_model.embed_dim,) and torch.isfinite(vector).all()
    assert not torch.allclose(vector, guide_color_latent(model, (220 / 255, 40 / 255, 40 / 255)))


def test_keep_layout_recolours_the_unguided_image_in_place_and_pulls_every_pixel_toward_it():
    """On a pixel model the latent is the image: a red square on grey becomes the guide colour where it was,
    the grey stays, and the loss is zero there and pulls any other image toward it."""
    pixel_model = torch.nn.Conv2d(3, 3, 1)
    red, blue = torch.tensor([0.9, -0.8, -0.8]), torch.tensor([-0.7, -0.3, 0.7])
    image = torch.zeros(1, 3, 16, 16)
    image[0, :, 4:10, 4:10] = red[:, None, None]
    target = layout_target(pixel_model, image, ((blue + 1) / 2).tolist())
    expected = image.clone()
    expected[0, :, 4:10, 4:10] = blue[:, None, None]
    assert torch.allclose(target, expected, atol=1e-6)
    loss = layout_loss(target, 2.0)
    assert loss(target) == 0
    other = torch.randn(1, 3, 16, 16, requires_grad=True)
    gradient, = torch.autograd.grad(loss(other), other)
    assert torch.allclose(-gradient, 2.0 * 2 * (target - other.detach()) / target[0].numel())
