import numpy as np
import pytest
import torch
from PIL import Image

from ldm.inference.errors import UsageError
from ldm.inference.images import (
    DepthMapWriter,
    OutputWriter,
    depth_to_uint16,
    grid_of_uint8,
    load_depth,
    load_image,
    load_mask,
    make_grid,
    read_parameters,
    to_uint8,
)


def _write_png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def test_make_grid_places_images_row_major_with_padding():
    images = torch.stack([torch.full((3, 4, 5), float(i + 1)) for i in range(3)])
    grid = make_grid(images, nrow=2, padding=2)
    assert grid.shape == (3, 2 * (4 + 2) + 2, 2 * (5 + 2) + 2)
    assert grid[0, 2, 2] == 1 and grid[0, 2, 2 + 7] == 2 and grid[0, 2 + 6, 2] == 3
    assert grid[0, 0, 0] == 0 and grid[0, 2 + 6, 2 + 7] == 0  # padding and the empty cell


def test_grid_of_uint8_images_equals_the_grid_of_the_float_images_they_came_from():
    images = torch.rand(5, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(grid_of_uint8(to_uint8(images), 2), to_uint8(make_grid(images, 2)[None])[0])


def test_make_grid_caps_columns_at_image_count():
    grid = make_grid(torch.ones(2, 3, 4, 4), nrow=8, padding=2)
    assert grid.shape == (3, 8, 14)


def test_to_uint8_truncates_like_the_originals():
    images = torch.tensor([0.0, 0.999, 1.0, 0.5]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert to_uint8(images)[0, 0, :, 0].tolist() == [0, 254, 255, 127]


def test_load_image_rounds_size_down_to_multiple_and_scales_to_unit_range(tmp_path):
    path = _write_png(tmp_path / "in.png", np.full((70, 130, 3), 255, dtype=np.uint8))
    image = load_image(path, multiple=64)
    assert image.shape == (1, 3, 64, 128)
    assert torch.allclose(image, torch.ones_like(image))


def test_load_image_too_small_for_the_model_is_an_error(tmp_path):
    path = _write_png(tmp_path / "in.png", np.zeros((30, 100, 3), dtype=np.uint8))
    with pytest.raises(UsageError, match="smaller than the 64x64"):
        load_image(path, multiple=64)


@pytest.mark.parametrize("content", [None, b"not an image"])
def test_missing_or_unreadable_image_names_the_flag(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match="^--init-img: "):
        load_image(str(path), multiple=8)


def test_mask_is_binarised_at_half(tmp_path):
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8).repeat(8, axis=0).repeat(2, axis=1)
    path = _write_png(tmp_path / "mask.png", values)
    mask = load_mask(path, image_size=(8, 8), multiple=8)
    assert mask.shape == (1, 1, 8, 8)
    assert mask[0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_mask_of_another_size_than_the_image_is_an_error(tmp_path):
    path = _write_png(tmp_path / "mask.png", np.zeros((8, 16), dtype=np.uint8))
    with pytest.raises(UsageError, match="mask is 16x8 but the image is 8x8"):
        load_mask(path, image_size=(8, 8), multiple=8)


def test_depth_reads_16_bit_maps(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)).save(path)
    depth = load_depth(str(path))
    assert depth.shape == (1, 1, 2, 2)
    expected = torch.tensor([0, 1000, 30000, 65535]) / 65535.0  # full 16-bit depth (the scale does not matter)
    assert torch.allclose(depth.flatten(), expected)


def test_writer_counts_on_from_existing_files_and_never_overwrites(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "00000.png").write_bytes(b"old")
    (samples / "00002.png").write_bytes(b"older")  # a gap: count says 2, which is taken
    (tmp_path / "grid-0001.png").write_bytes(b"old grid")
    writer = OutputWriter(str(tmp_path))
    array = np.zeros((4, 4, 3), dtype=np.uint8)
    first, second = writer.save_sample(array, "p"), writer.save_sample(array, "q")
    grid = writer.save_grid(torch.zeros(2, 3, 4, 4), nrow=2, parameters="g")
    assert (first.name, second.name) == ("00003.png", "00004.png")
    assert grid.name == "grid-0002.png"
    assert (samples / "00002.png").read_bytes() == b"older"
    assert (tmp_path / "grid-0001.png").read_bytes() == b"old grid"
    assert read_parameters(str(first)) == "p" and read_parameters(str(grid)) == "g"


def test_writer_numbers_a_fresh_folder_as_the_originals(tmp_path):
    writer = OutputWriter(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing is created before the first write
    path = writer.save_sample(np.zeros((4, 4, 3), dtype=np.uint8), None)
    grid = writer.save_grid(torch.zeros(1, 3, 4, 4), nrow=1, parameters=None)
    assert path == tmp_path / "out" / "samples" / "00000.png"
    assert grid == tmp_path / "out" / "grid-0000.png"


def test_writer_skips_what_it_is_told_to_skip(tmp_path):
    writer = OutputWriter(str(tmp_path / "out"), skip_save=True, skip_grid=True)
    assert writer.save_sample(np.zeros((4, 4, 3), dtype=np.uint8), None) is None
    assert writer.save_grid(torch.zeros(1, 3, 4, 4), nrow=1, parameters=None) is None
    assert not (tmp_path / "out").exists()


def test_outdir_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="file is a file, not a folder"):
        OutputWriter(str(tmp_path / "file"))


def test_outdir_under_a_file_is_an_error_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"out lies under .*file, which is a file, not a folder"):
        OutputWriter(str(tmp_path / "file" / "out"))


def test_outdir_where_nothing_can_be_written_is_an_error_before_any_work(tmp_path, monkeypatch):
    """A folder that refuses new files (read-only, no permission; simulated, as root may write
    anywhere) is found when the writer is made, and nothing is created."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(UsageError, match=rf"^--outdir: cannot write in {tmp_path} \(Permission denied\)$"):
        OutputWriter(str(tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_a_png_is_never_left_half_written(tmp_path, monkeypatch):
    """An interruption while encoding leaves neither the PNG nor its temporary file."""
    from ldm.inference.images import save_png

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_png(np.zeros((4, 4, 3), dtype=np.uint8), tmp_path / "00000.png")
    assert list(tmp_path.iterdir()) == []


def test_save_png_refuses_to_replace_and_reads_back(tmp_path):
    from ldm.inference.images import save_png

    save_png(np.full((4, 4, 3), 7, dtype=np.uint8), tmp_path / "a.png", "params")
    with pytest.raises(FileExistsError):
        save_png(np.zeros((4, 4, 3), dtype=np.uint8), tmp_path / "a.png")
    assert read_parameters(str(tmp_path / "a.png")) == "params"
    assert np.asarray(Image.open(tmp_path / "a.png")).max() == 7
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_16_bit_greyscale_images_and_masks_are_read_at_their_depth(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)).save(path)
    image = load_image(str(path), multiple=1)
    assert torch.allclose((image[0, 0].flatten() + 1) / 2, torch.tensor([0, 16384, 32768, 65535]) / 65535.0)
    assert load_mask(str(path), image_size=(2, 2), multiple=1).flatten().tolist() == [0, 0, 1, 1]


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    path = _write_png(tmp_path / "big.png", np.zeros((64, 64, 3), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 > 2 x 100: PIL refuses it as a bomb
    with pytest.raises(UsageError, match="big.png is too large to decode safely"):
        load_image(path, multiple=8)


def test_pixels_for_output_convert_back_to_the_same_8_bit_values():
    from ldm.inference.images import image_to_tensor, pixels_for_output

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    image = image_to_tensor(Image.fromarray(levels))
    assert np.array_equal(to_uint8(pixels_for_output(image))[0], levels)


def test_depth_maps_are_stretched_to_16_bits_and_read_back_at_that_depth(tmp_path):
    depth = torch.tensor([[2.0, 4.0], [3.0, 6.0]])
    array = depth_to_uint16(depth)
    assert array.dtype == np.uint16 and array[..., 0].tolist() == [[0, 32768], [16384, 65535]]
    assert depth_to_uint16(torch.full((2, 3), 7.0)).max() == 0  # a flat map
    path = DepthMapWriter(str(tmp_path / "d.png"), count=1).save(depth)
    torch.testing.assert_close(load_depth(str(path))[0, 0], (depth - 2.0) / 4.0, atol=1e-5, rtol=0)


def test_depth_map_writer_numbers_maps_in_a_folder_and_refuses_a_file_for_several(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "depth-00000.png").write_bytes(b"taken")
    writer = DepthMapWriter(str(tmp_path / "maps"), count=2)
    paths = [writer.save(torch.rand(4, 4)) for _ in range(2)]
    assert [p.name for p in paths] == ["depth-00001.png", "depth-00002.png"]
    assert (tmp_path / "maps" / "depth-00000.png").read_bytes() == b"taken"
    with pytest.raises(UsageError, match="2 depth maps to write .* give a folder"):
        DepthMapWriter(str(tmp_path / "one.png"), count=2)
    with pytest.raises(UsageError, match="exists; give a new file name"):
        DepthMapWriter(str(paths[0]), count=1)
