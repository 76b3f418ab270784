"""TF "SAME" padding: ceil(size / stride) outputs, the smaller half of the padding first."""
import pytest
import torch
import torch.nn.functional as F

from ldm.modules.midas.midas.backbones.padding import Conv2dSame, MaxPool2dSame, same_padding


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (384, 7, 2, (2, 3)),   # the ViT-hybrid stem on 384: 5 pixels, 2 before, 3 after
    (96, 3, 2, (0, 1)),    # even input, 3x3/2: all of it after (PyTorch's padding=1 would differ)
    (97, 3, 2, (1, 1)),
    (64, 5, 2, (1, 2)),
    (10, 1, 2, (0, 0)),
    (10, 3, 1, (1, 1)),
])
def test_same_padding_splits_as_tensorflow(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size", [31, 32, 33, 50])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2), (7, 2), (1, 2)])
def test_conv2d_same_gives_ceil_size_over_stride_and_pads_explicitly(size, kernel, stride):
    conv = Conv2dSame(2, 3, kernel, stride=stride, bias=True)
    x = torch.randn(1, 2, size, size + 3)
    out = conv(x)
    assert out.shape[-2:] == (-(-size // stride), -(-(size + 3) // stride))
    top, bottom = same_padding(size, kernel, stride)
    left, right = same_padding(size + 3, kernel, stride)
    reference = F.conv2d(F.pad(x, [left, right, top, bottom]), conv.weight, conv.bias, stride=stride)
    torch.testing.assert_close(out, reference)


def test_max_pool_same_never_picks_the_padding():
    x = -1.0 - torch.rand(1, 1, 8, 8)  # all negative: zero padding would win at the border
    out = MaxPool2dSame(3, 2)(x)
    assert out.shape == (1, 1, 4, 4) and out.max() < -1.0
    torch.testing.assert_close(out, F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=float("-inf")), 3, 2))
