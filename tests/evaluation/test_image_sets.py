"""Reading the inputs of evaluate.py: image folders, sample .npz files, statistics files."""
import numpy as np
import pytest
from PIL import Image

from ldm.evaluation.fidelity import GaussianStats
from ldm.evaluation.image_sets import open_input, read_stats, save_stats
from ldm.inference.errors import UsageError


def test_a_folder_is_read_in_name_order_as_rgb_in_batches_of_one_size(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"{i:02}.png")
    Image.fromarray(arrays[0][:, :, 0]).save(tmp_path / "03.png")                       # grey
    Image.fromarray(rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)).save(tmp_path / "04.png")  # RGBA, new size
    (tmp_path / "notes.txt").write_text("not an image")
    images = open_input(str(tmp_path))
    batches = list(images.batches(2))
    assert len(images) == 5 and [b.shape for b in batches] == [(2, 8, 8, 3), (2, 8, 8, 3), (1, 4, 6, 3)]
    np.testing.assert_array_equal(batches[0][1], arrays[1])
    np.testing.assert_array_equal(batches[1][1], np.repeat(arrays[0][:, :, :1], 3, axis=2))


def test_samples_are_streamed_from_the_npz_in_batches(tmp_path):
    samples = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", samples)
    images = open_input(str(tmp_path / "samples.npz"))
    batches = list(images.batches(2))
    assert len(images) == 5 and [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), samples)


def test_statistics_round_trip_and_are_never_overwritten(tmp_path):
    stats = GaussianStats(np.arange(3.0), np.eye(3) * 2)
    save_stats(str(tmp_path / "stats.npz"), stats)
    loaded = open_input(str(tmp_path / "stats.npz"))
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(read_stats(str(tmp_path / "stats.npz")).sigma, stats.sigma)
    with pytest.raises(UsageError, match="exists"):
        save_stats(str(tmp_path / "stats.npz"), stats)


@pytest.mark.parametrize("name, content, message", [
    ("missing.npz", None, "does not exist"),
    ("floats.npz", np.zeros((2, 4, 4, 3), np.float32), "must be uint8"),
    ("other.npz", "other", "neither samples"),
    ("empty", "folder", "holds no images"),
    ("image.png", "png", "not an .npz"),
])
def test_unusable_inputs_are_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.savez(path, content)
    elif content == "other":
        np.savez(path, something=np.zeros(2))
    elif content == "folder":
        path.mkdir()
    elif content == "png":
        Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(UsageError, match=message):
        open_input(str(path))


def test_the_npz_sample_diffusion_streams_out_is_read_back(tmp_path):
    from ldm.inference.logdir_sampling import NpzStream

    samples = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    stream = NpzStream(tmp_path / "3x4x4x3-samples.npz", samples.shape)
    stream.append(samples[:2])
    stream.append(samples[2:])
    images = open_input(str(stream.close()))
    np.testing.assert_array_equal(np.concatenate(list(images.batches(2))), samples)
