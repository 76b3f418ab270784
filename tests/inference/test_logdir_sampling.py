"""sample_diffusion.py's model and output folders (ldm/inference/logdir_sampling.py): what ``-r``
finds in each layout, the original's folder names, and the streamed ``.npz`` FID tools read."""
import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.inference.errors import UsageError
from ldm.inference.logdir_sampling import (
    NpzStream,
    SampleFolder,
    global_step,
    resolve_resume,
    samples_logdir,
)
from ldm.util import save_checkpoint
from tests.scripts.helpers import files_under


def _touch(path: Path, text: str = "model: {target: x}\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _main_logdir(root: Path) -> Path:
    """A main.py logdir: two runs' configs (resumed once) and checkpoints/last.ckpt."""
    logdir = root / "2024-01-01T00-00-00_tiny"
    _touch(logdir / "configs" / "2024-01-01T00-00-00-project.yaml")
    _touch(logdir / "configs" / "2024-01-02T00-00-00-project.yaml")
    _touch(logdir / "configs" / "2024-01-02T00-00-00-lightning.yaml")
    _touch(logdir / "checkpoints" / "last.ckpt", "")
    _touch(logdir / "checkpoints" / "epoch=000001.ckpt", "")
    return logdir


def test_a_main_py_logdir_gives_last_ckpt_and_its_newest_project_config(tmp_path):
    logdir = _main_logdir(tmp_path)
    run = resolve_resume(str(logdir), None)
    assert run.paths.ckpt == str(logdir / "checkpoints" / "last.ckpt")
    assert run.paths.config == str(logdir / "configs" / "2024-01-02T00-00-00-project.yaml")
    assert run.paths.config_trusted and run.logdir == logdir


def test_a_checkpoint_of_a_main_py_logdir_belongs_to_that_logdir(tmp_path):
    logdir = _main_logdir(tmp_path)
    run = resolve_resume(str(logdir / "checkpoints" / "epoch=000001.ckpt"), None)
    assert run.paths.config.endswith("2024-01-02T00-00-00-project.yaml") and run.logdir == logdir
    named = resolve_resume(str(logdir / "checkpoints" / "last.ckpt"), str(tmp_path / "mine.yaml"))
    assert named.paths.config == str(tmp_path / "mine.yaml") and named.logdir == logdir


def test_a_model_folder_of_the_original_gives_model_ckpt_and_config_yaml_untrusted(tmp_path):
    folder = tmp_path / "celeba256"
    _touch(folder / "model.ckpt", "")
    _touch(folder / "config.yaml")
    run = resolve_resume(str(folder), None)
    assert (run.paths.ckpt, run.paths.config) == (str(folder / "model.ckpt"), str(folder / "config.yaml"))
    assert not run.paths.config_trusted and run.logdir == folder
    assert resolve_resume(str(folder / "model.ckpt"), None).paths.config == str(folder / "config.yaml")


def test_a_checkpoint_with_a_yaml_beside_it_uses_that_yaml_untrusted_and_its_folder(tmp_path):
    ckpt = _touch(tmp_path / "models" / "pixel.safetensors", "")
    _touch(tmp_path / "models" / "pixel.yaml", "model:\n  target: ldm.models.diffusion.ddpm.DDPM\n")
    run = resolve_resume(str(ckpt), None)
    assert run.paths.config == str(tmp_path / "models" / "pixel.yaml") and not run.paths.config_trusted
    assert run.logdir == tmp_path / "models"


def test_the_shipped_checkpoints_folder_is_not_taken_for_a_main_py_logdir(tmp_path):
    repo = tmp_path / "repo"
    _touch(repo / "configs" / "shapes" / "pixel-ddpm.yaml")
    ckpt = _touch(repo / "checkpoints" / "shapes-pixel-ddpm.safetensors", "")
    _touch(repo / "checkpoints" / "shapes-pixel-ddpm.yaml", "model:\n  target: ldm.models.diffusion.ddpm.DDPM\n")
    assert resolve_resume(str(ckpt), None).logdir == repo / "checkpoints"


@pytest.mark.parametrize("layout, message", [
    ("missing", "-r/--resume: not found: "),
    ("empty folder", r"holds neither checkpoints/last.ckpt \(a main.py logdir\) nor model.ckpt"),
    ("logdir without configs", "has checkpoints/last.ckpt but no configs/\\*-project.yaml; pass --config"),
    ("lone checkpoint", "no config for .*lone.ckpt .*; pass --config"),
])
def test_what_resume_cannot_use_is_one_line_naming_what_is_missing(tmp_path, layout, message):
    target = {"missing": lambda: tmp_path / "nothing", "empty folder": lambda: tmp_path,
              "logdir without configs": lambda: _touch(tmp_path / "run" / "checkpoints" / "last.ckpt", "").parents[1],
              "lone checkpoint": lambda: _touch(tmp_path / "lone.ckpt", "")}[layout]()
    with pytest.raises(UsageError, match=message):
        resolve_resume(str(target), None)


def test_the_global_step_comes_from_the_checkpoint(tmp_path):
    tensors = {"w": torch.zeros(2)}
    save_checkpoint(tensors, str(tmp_path / "a.ckpt"), metadata={"global_step": 1234})
    save_checkpoint(tensors, str(tmp_path / "b.safetensors"), metadata={"global_step": 77})
    save_checkpoint(tensors, str(tmp_path / "c.safetensors"))
    assert [global_step(str(tmp_path / n)) for n in ("a.ckpt", "b.safetensors", "c.safetensors")] == [1234, 77, 0]
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError):
        global_step(str(tmp_path / "bad.ckpt"))


def test_an_extra_logdir_takes_the_runs_folder_name(tmp_path):
    assert samples_logdir(tmp_path / "run", "none") == tmp_path / "run"
    assert samples_logdir(tmp_path / "run", str(tmp_path / "elsewhere")) == tmp_path / "elsewhere" / "run"


def test_the_npz_stream_is_what_np_savez_writes_and_np_load_reads(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    stream = NpzStream(tmp_path / "5x4x6x3-samples.npz", images.shape)
    stream.append(images[:2])
    assert not (tmp_path / "5x4x6x3-samples.npz").exists()
    stream.append(images[2:])
    path = stream.close()
    with np.load(path) as loaded:
        assert loaded.files == ["arr_0"] and np.array_equal(loaded["arr_0"], images)
    assert files_under(tmp_path) == [path]


def test_the_npz_stream_refuses_wrong_rows_a_short_array_and_an_existing_file(tmp_path):
    stream = NpzStream(tmp_path / "x.npz", (2, 4, 4, 3))
    with pytest.raises(ValueError):
        stream.append(np.zeros((1, 4, 4, 1), dtype=np.uint8))
    stream.append(np.zeros((1, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="1 of 2 rows written"):
        stream.close()
    stream.discard()
    assert files_under(tmp_path) == []
    (tmp_path / "y.npz").write_bytes(b"mine")
    stream = NpzStream(tmp_path / "y.npz", (1, 1, 1, 3))
    stream.append(np.zeros((1, 1, 1, 3), dtype=np.uint8))
    with pytest.raises(FileExistsError):
        stream.close()
    assert (tmp_path / "y.npz").read_bytes() == b"mine"


def test_sample_folders_have_the_originals_layout_and_never_reuse_a_folder(tmp_path):
    now = datetime.datetime(2024, 5, 6, 7, 8, 9)
    first, second = SampleFolder(tmp_path, 1200, now), SampleFolder(tmp_path, 1200, now)
    for folder in (first, second):
        folder.start({"n_samples": 2})
        folder.add(np.zeros((2, 4, 4, 3), dtype=np.uint8), ["a", "b"], total=2)
        folder.finish()
    assert first.root == tmp_path / "samples" / "00001200" / "2024-05-06-07-08-09"
    assert second.root == tmp_path / "samples" / "00001200" / "2024-05-06-07-08-09-1"
    assert [p.relative_to(first.root).as_posix() for p in files_under(first.root)] == [
        "img/sample_000000.png", "img/sample_000001.png", "numpy/2x4x4x3-samples.npz", "sampling_config.yaml"]
