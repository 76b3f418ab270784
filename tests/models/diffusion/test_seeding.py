import torch

from ldm.models.diffusion.seeding import ImageNoise, image_seeds


def test_image_seeds_count_on_from_the_image_index():
    assert image_seeds(42, 3, 2) == [45, 46]


def test_an_images_draws_do_not_depend_on_its_batch():
    alone = ImageNoise([7], torch.device("cpu"))
    batch = ImageNoise([5, 7, 9], torch.device("cpu"))
    for shape in ((4, 2, 2), (3, 5)):  # successive draws stay in step too
        assert torch.equal(alone.randn(shape)[0], batch.randn(shape)[1])


def test_different_seeds_draw_different_noise():
    noise = ImageNoise([1, 2], torch.device("cpu")).randn((16,))
    assert not torch.equal(noise[0], noise[1])


def test_generators_are_the_per_image_streams():
    noise = ImageNoise([3, 4], torch.device("cpu"))
    assert len(noise.generators) == 2
    expected = torch.randn(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.randn(5, generator=noise.generators[1]), expected)
