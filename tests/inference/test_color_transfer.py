"""Colour transfer for inversion edits (ldm.inference.color_transfer): the object's latent takes
the target's colour where the source object is, the background stays, and the structure loss is blind
to hue but not to layout."""
import torch

from ldm.inference.color_transfer import (
    chroma_length,
    colored_share,
    object_coverage,
    recolored_latent,
    structure_loss,
    transfer_color,
)
from tests.inference import synthetic_latents

BACKGROUND = torch.tensor([0.5, -0.2, 0.1, 0.3])
SOURCE_COLOR = torch.tensor([1.0, 0.5, -0.5, 0.0])
TARGET_COLOR = torch.tensor([-0.8, 0.2, 0.4, 1.0])


def latent_with_object(color, coverage):
    return synthetic_latents.latent_with_object(BACKGROUND, color, coverage)


def square_coverage(top, left, size=3, edge=0.5, hw=8):
    """A size x size block fully covered, with a column of partly covered pixels on its right."""
    coverage = torch.zeros(hw, hw)
    coverage[top:top + size, left:left + size] = 1.0
    coverage[top:top + size, left + size] = edge
    return coverage


def test_the_source_object_takes_the_target_colour_in_place_and_the_background_stays():
    source_coverage, target_coverage = square_coverage(1, 1), square_coverage(4, 3, size=4)
    source = latent_with_object(SOURCE_COLOR, source_coverage)
    target = latent_with_object(TARGET_COLOR, target_coverage)
    edited = transfer_color(source, target, source_coverage[None, None], target_coverage[None, None])
    # what the source latent would be with the target colour: same place, same partial edge
    assert torch.allclose(edited, latent_with_object(TARGET_COLOR, source_coverage), atol=1e-6)
    outside = source_coverage == 0
    assert torch.equal(edited[0][:, outside], source[0][:, outside])


def test_a_latent_without_an_object_interior_comes_back_unchanged():
    source_coverage = square_coverage(1, 1)
    source = latent_with_object(SOURCE_COLOR, source_coverage)
    faint = torch.full((1, 1, 8, 8), 0.0)
    faint[..., 2, 2] = 0.5  # touched, but no pixel covered >= 0.9
    target = latent_with_object(TARGET_COLOR, faint[0, 0])
    assert torch.equal(transfer_color(source, target, source_coverage[None, None], faint), source)
    assert torch.equal(transfer_color(source, source, faint, source_coverage[None, None]), source)


def test_each_image_of_a_batch_is_recoloured_from_its_own_pair():
    square = square_coverage(2, 2)
    coverage = square[None, None].expand(2, 1, 8, 8)
    source = torch.cat([latent_with_object(SOURCE_COLOR, square), latent_with_object(TARGET_COLOR, square)])
    target = torch.cat([latent_with_object(TARGET_COLOR, square), latent_with_object(SOURCE_COLOR, square)])
    edited = transfer_color(source, target, coverage, coverage)
    assert torch.allclose(edited, target, atol=1e-6)


def image_with_square(rgb, top, left, size=8, hw=16):
    """[1, 3, hw, hw] in [-1, 1]: mid-grey with an RGB (0-1) square."""
    image = torch.zeros(1, 3, hw, hw)
    image[0, :, top:top + size, left:left + size] = torch.tensor(rgb)[:, None, None] * 2 - 1
    return image


def test_object_coverage_counts_the_coloured_pixels_of_each_latent_pixel():
    image = image_with_square((0.9, 0.1, 0.1), top=4, left=6)  # columns 6..13: latent columns 1.5..3.25 at f=4
    coverage = object_coverage(image, (4, 4))
    assert coverage.shape == (1, 1, 4, 4)
    assert torch.equal(coverage[0, 0, 1:3, 2], torch.ones(2))
    assert torch.equal(coverage[0, 0, 1:3, 1], torch.full((2,), 0.5))
    assert coverage[0, 0, 0].sum() == 0 and coverage[0, 0, 3].sum() == 0
    grey = image_with_square((0.7, 0.7, 0.7), top=4, left=6)  # bright but colourless: no object
    assert object_coverage(grey, (4, 4)).sum() == 0


def test_the_structure_loss_ignores_the_hue_and_chroma_but_not_where_the_colour_is():
    red = image_with_square((0.9, 0.1, 0.1), 4, 4)
    loss = structure_loss(red, 10.0)
    assert loss(red) == 0
    blue_same_chroma = image_with_square((0.1, 0.1, 0.9), 4, 4)
    assert torch.allclose(chroma_length(red).sum(), chroma_length(blue_same_chroma).sum())
    assert float(loss(blue_same_chroma)) < 1e-10
    dull_green = image_with_square((0.3, 0.7, 0.3), 4, 4)  # half red's chroma, still an object
    assert float(loss(dull_green)) < 0.01
    moved = image_with_square((0.1, 0.1, 0.9), 6, 6)
    assert float(loss(moved)) > 0.1
    assert torch.allclose(loss(torch.cat([moved, red])), loss(moved))  # per image, summed over the batch


def test_the_coloured_share_is_a_soft_object_coverage():
    image = image_with_square((0.9, 0.1, 0.1), 4, 4)
    share = colored_share(image)
    assert share.shape == (1, 16, 16)
    assert torch.all(share[0, 4:12, 4:12] > 0.99) and float(share[0, 0, 0]) < 0.02


def image_of_coverage(coverage, factor=4):
    """A [1, 3, h*factor, w*factor] image in [-1, 1]: mid-grey, with saturated red pixels filling each latent
    pixel's share of ``coverage`` (0, 0.5 or 1; a half-covered pixel has its left half red)."""
    image = torch.zeros(1, 3, coverage.shape[0] * factor, coverage.shape[1] * factor)
    red = torch.tensor([0.9, -0.8, -0.8])[:, None]
    for (row, column), share in zip(coverage.nonzero().tolist(), coverage[coverage > 0].tolist()):
        width = round(share * factor)
        block = image[0, :, row * factor:(row + 1) * factor, column * factor:column * factor + width]
        block[:] = red[..., None]
    return image


def test_a_latent_takes_a_given_colour_vector_where_its_decoded_image_shows_the_object():
    coverage = square_coverage(2, 2)
    latent = latent_with_object(SOURCE_COLOR, coverage)
    recolored = recolored_latent(latent, image_of_coverage(coverage), TARGET_COLOR)
    assert torch.allclose(recolored, latent_with_object(TARGET_COLOR, coverage), atol=1e-6)


def test_a_latent_whose_image_shows_no_object_is_not_recoloured():
    latent = latent_with_object(SOURCE_COLOR, square_coverage(2, 2))
    assert torch.equal(recolored_latent(latent, torch.zeros(1, 3, 32, 32), TARGET_COLOR), latent)
