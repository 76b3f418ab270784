"""make_grid: torchvision's layout (padding, rows, gray frame after rescaling)."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldm.training.images import grid_to_uint8, make_grid, save_log_image


def test_grid_places_images_in_rows_with_padding():
    images = torch.stack([torch.full((3, 2, 2), float(i)) for i in range(5)])
    grid = make_grid(images, nrow=4, padding=1, pad_value=-1.0)
    assert grid.shape == (3, 2 * 3 + 1, 4 * 3 + 1)
    assert torch.all(grid[:, 1:3, 1:3] == 0) and torch.all(grid[:, 1:3, 4:6] == 1)
    assert torch.all(grid[:, 4:6, 1:3] == 4)  # fifth image starts the second row
    assert torch.all(grid[:, 0, :] == -1) and torch.all(grid[:, 4:6, 4:6] == -1)  # frame and empty cell


def test_fewer_images_than_nrow_make_a_single_short_row_and_gray_becomes_3_channels():
    grid = make_grid(torch.zeros(2, 1, 4, 4), nrow=4)
    assert grid.shape == (3, 8, 14)


def test_rescaled_grid_is_uint8_with_a_gray_frame(tmp_path):
    array = grid_to_uint8(make_grid(torch.ones(1, 3, 2, 2), nrow=4, padding=2), rescale=True)
    assert array.dtype == np.uint8 and array.shape == (6, 6, 3)
    assert array[0, 0, 0] == 127 and array[2, 2, 0] == 255  # pad 0 in [-1, 1] is mid-gray
    assert save_log_image(array, str(tmp_path / "sub" / "g.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "g.png")), array)
    assert not save_log_image(np.zeros_like(array), str(tmp_path / "sub" / "g.png"))  # kept, not replaced
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "g.png")), array)


def test_grid_needs_a_batch():
    with pytest.raises(ValueError, match=r"expects a \(B, C, H, W\) batch"):
        make_grid(torch.zeros(3, 4, 4))
