"""benchmarks/winograd_conv.py: Winograd F(2x2, 3x3) and F(4x4, 3x3) compute the same convolution
as ``F.conv2d(padding=1)``, for sides that are not multiples of the tile too, within the rounding
error the experiment reports."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks import winograd_conv
from benchmarks.winograd_conv import TILE_SIZES, relative_error, winograd_conv2d


@pytest.mark.parametrize("tile, bound", [(2, 3e-6), (4, 1e-4)])
@pytest.mark.parametrize("height, width, bias", [(8, 8, True), (7, 13, False), (1, 5, True)])
def test_winograd_equals_the_direct_convolution(tile, bound, height, width, bias):
    generator = torch.Generator().manual_seed(height * width)
    x = torch.randn(2, 16, height, width, generator=generator)
    weight = torch.randn(24, 16, 3, 3, generator=generator) / 12
    b = torch.randn(24, generator=generator) if bias else None
    reference = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    out = winograd_conv2d(x, weight, b, tile)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert relative_error(out, reference) < bound


def test_only_the_tiles_it_has_transforms_for_are_accepted():
    assert TILE_SIZES == (2, 4)
    with pytest.raises(ValueError, match="tile must be one of"):
        winograd_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3), tile=3)
    with pytest.raises(ValueError, match="3, 3"):
        winograd_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 2, 5, 5))


def test_use_winograd_switches_only_plain_3x3_convolutions_above_the_size_threshold(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1))
    x = torch.randn(1, 4, 16, 16)
    expected = model(x)
    assert winograd_conv.use_winograd(model, min_side=16, tile=4) == 2
    seen = []

    def recording(x, weight, bias, tile):
        seen.append(tuple(x.shape))
        return winograd_conv2d(x, weight, bias, tile)

    monkeypatch.setattr(winograd_conv, "winograd_conv2d", recording)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert seen == [(1, 4, 16, 16)]  # the third convolution sees 8x8 inputs: computed directly
