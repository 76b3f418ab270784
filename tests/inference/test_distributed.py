"""Sampling under torchrun (ldm/inference/distributed.py): two gloo processes on the CPU make,
between them, the very files one process makes (byte for byte), and a rerun makes only what is
missing; plus the sharing out and the detection of images made already, in this process."""
import os
import re
import socket

import numpy as np
import pytest
import torch

from ldm.inference.distributed import already_made, first_indices, rank_device, unmade_batches
from ldm.inference.errors import UsageError
from ldm.inference.images import save_png
from ldm.inference.pipeline import Batch
from tests.scripts.helpers import files_under, main_exit_code, run_script

TXT2IMG = ["--steps", "2", "--H", "16", "--W", "16", "--scale", "3.0", "--n_samples", "2", "--n_iter", "2",
           "--seed", "7", "--device", "cpu"]
PROMPTS = "a red circle\na blue square\na green triangle\n"  # batches of 2 + 1, twice: 4 batches, 6 images


def _in_one_process(script, argv):
    """The script's run in this process, with one thread as the torchrun workers have."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main_exit_code(script, argv)
    finally:
        torch.set_num_threads(threads)


def _contents(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files_under(folder)}


def _untouched(paths):
    return {path: (os.stat(path).st_ino, os.stat(path).st_mtime_ns) for path in paths}


@pytest.mark.slow
def test_txt2img_two_processes_write_the_files_of_one_and_a_rerun_makes_only_the_missing(tiny_models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    flags = ["--from-file", str(prompts), *TXT2IMG, *tiny_models["txt2img"].flags()]
    assert _in_one_process("txt2img.py", [*flags, "--outdir", str(tmp_path / "single")]) == 0
    shared = run_script("txt2img.py", *flags, "--outdir", str(tmp_path / "shared"), processes=2)
    assert shared.returncode == 0, shared.stderr
    expected = _contents(tmp_path / "single")
    assert sorted(expected) == ["grid-0000.png", *(f"samples/{index:05}.png" for index in range(6))]
    assert _contents(tmp_path / "shared") == expected

    samples = tmp_path / "shared" / "samples"
    (samples / "00004.png").unlink()  # as if a process had died before writing it
    kept = _untouched(sorted(samples.iterdir()) + [tmp_path / "shared" / "grid-0000.png"])
    rerun = run_script("txt2img.py", *flags, "--outdir", str(tmp_path / "shared"), processes=2)
    assert rerun.returncode == 0, rerun.stderr
    assert "5 of 6 image(s) were there already; 2 process(es) sampled the 1 batch(es)" in rerun.stdout
    assert _contents(tmp_path / "shared") == expected  # the grid equal to the one there is not written twice
    assert _untouched(kept) == kept


@pytest.mark.slow
def test_sample_diffusion_two_processes_write_the_samples_and_npz_of_one_and_resume(tiny_sampling_models, tmp_path,
                                                                                     monkeypatch, capsys):
    model = tiny_sampling_models["ddpm"]
    flags = ["-r", str(model.ckpt), "-n", "5", "--batch_size", "2", "-c", "2", "--seed", "3", "--device", "cpu"]
    assert _in_one_process("sample_diffusion.py", [*flags, "-l", str(tmp_path / "single")]) == 0
    shared = run_script("sample_diffusion.py", *flags, "-l", str(tmp_path / "shared"), processes=2)
    assert shared.returncode == 0, shared.stderr
    (one,) = (tmp_path / "single").glob("*/samples/*/*")
    (run,) = (tmp_path / "shared").glob("*/samples/*/*")
    pngs = {path.name: path.read_bytes() for path in sorted((one / "img").iterdir())}
    assert sorted(pngs) == [f"sample_{index:06}.png" for index in range(5)]
    assert {path.name: path.read_bytes() for path in sorted((run / "img").iterdir())} == pngs
    assert _npz(one) == _npz(run)

    (npz,) = (run / "numpy").glob("*.npz")
    npz.unlink()  # an interrupted run: no .npz yet, one sample missing
    (run / "img" / "sample_000002.png").unlink()
    _join_group_of_one(monkeypatch)  # the rerun as one torchrun process, in this one (no interpreter to start)
    assert _in_one_process("sample_diffusion.py", [*flags, "-l", str(tmp_path / "shared")]) == 0
    assert list((tmp_path / "shared").glob("*/samples/*/*")) == [run]  # carried on, no new folder
    assert "4 of 5 image(s) were there already; 1 process(es) sampled the 1 batch(es)" in capsys.readouterr().out
    assert {path.name: path.read_bytes() for path in sorted((run / "img").iterdir())} == pngs
    assert _npz(run) == _npz(one)


def _npz(run):
    (path,) = (run / "numpy").glob("*.npz")
    with np.load(path) as loaded:
        return path.name, loaded["arr_0"].tobytes()


def _join_group_of_one(monkeypatch):
    """The variables torchrun sets, for a group of this process alone (gloo on a free port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def group_of_one(monkeypatch):
    _join_group_of_one(monkeypatch)


def test_a_foreign_file_under_an_images_name_stops_the_run_before_sampling(tiny_models, tmp_path, capsys,
                                                                            group_of_one):
    samples = tmp_path / "out" / "samples"
    samples.mkdir(parents=True)
    (samples / "00001.png").write_bytes(b"my notes")
    code = _in_one_process("txt2img.py", ["--prompt", "a red circle", *TXT2IMG, *tiny_models["txt2img"].flags(),
                                          "--outdir", str(tmp_path / "out")])
    assert code == 2
    assert re.fullmatch(r"txt2img\.py: error: \S+00001\.png exists but is not this run's image .*",
                        capsys.readouterr().err.strip().splitlines()[-1])
    assert files_under(tmp_path / "out") == [samples / "00001.png"]
    assert (samples / "00001.png").read_bytes() == b"my notes"


def test_first_indices_count_the_images_of_the_batches_before():
    batches = [Batch(["a", "b"], [0, 1]), Batch(["c"], [2]), Batch(["a", "b"], [3, 4])]
    assert first_indices(batches) == [0, 2, 3]


def test_a_batch_is_unmade_until_every_image_is_there_with_its_parameters(tmp_path):
    batches = [Batch(["a", "b"], [0, 1]), Batch(["c"], [2])]

    def describe(batch):
        return [f"{prompt} seed {seed}" for prompt, seed in zip(batch.prompts, batch.seeds)]

    def path_of(index):
        return tmp_path / f"{index}.png"

    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    assert unmade_batches(batches, describe, path_of) == ([0, 1], 0)
    save_png(pixels, path_of(2), "c seed 2")
    save_png(pixels, path_of(0), "a seed 0")
    assert unmade_batches(batches, describe, path_of) == ([0], 2)
    save_png(pixels, path_of(1), "b seed 1")
    assert unmade_batches(batches, describe, path_of) == ([], 3)


def test_a_file_of_another_run_under_an_images_name_stops_the_run_and_stays(tmp_path):
    path = tmp_path / "00000.png"
    save_png(np.zeros((4, 4, 3), dtype=np.uint8), path, "another prompt")
    before = path.read_bytes()
    with pytest.raises(UsageError, match="not this run's image"):
        already_made(path, "a red circle")
    (tmp_path / "00001.png").write_text("notes")
    with pytest.raises(UsageError, match="not this run's image"):
        already_made(tmp_path / "00001.png", "a red circle")
    assert path.read_bytes() == before
    assert not already_made(tmp_path / "00002.png", "a red circle")


def test_each_rank_takes_the_gpu_of_its_local_rank_and_refuses_a_fixed_one():
    expected = "cuda:1" if torch.cuda.is_available() else "auto"
    assert rank_device("auto", 1) == expected
    assert rank_device("cpu", 1) == "cpu"
    with pytest.raises(UsageError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:0", 1)
