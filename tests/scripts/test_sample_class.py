"""scripts/sample_class.py on a tiny class-conditional model: txt2img's output conventions (numbered
PNGs with parameters, a grid with one row per class), classes by number or name, one-line errors
that write nothing."""
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.scripts.helpers import TINY_CLASSES, bad_input_failures, files_under, main_exit_code, png_parameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SCRIPT = "sample_class.py"
TILE = 16 + 2  # a 16 x 16 image and the grid's 2-pixel padding


@pytest.fixture(scope="module")
def named_model(tiny_sampling_models, tmp_path_factory):
    """The tiny class model with names beside its checkpoint."""
    folder = tmp_path_factory.mktemp("named")
    model = tiny_sampling_models["class"]
    shutil.copy(model.ckpt, folder / "shapes.ckpt")
    shutil.copy(model.config, folder / "shapes.yaml")
    (folder / "shapes.classes.txt").write_text("red circle\nblue square\ngreen star\nyellow triangle\n")
    return ["--ckpt", str(folder / "shapes.ckpt"), "--config", str(folder / "shapes.yaml")]


def test_n_samples_of_each_class_with_a_grid_row_per_class(named_model, tmp_path, capsys):
    outdir = tmp_path / "out"
    code = main_exit_code(SCRIPT, [*named_model, "--classes", "green star", "0", "--n_samples", "3", "--steps", "4",
                                   "--seed", "10", "--outdir", str(outdir)])
    assert code == 0, capsys.readouterr().err
    written = files_under(outdir)
    assert [p.relative_to(outdir).as_posix() for p in written] == [
        "grid-0000.png", *(f"samples/{i:05}.png" for i in range(6))]
    prompts = [png_parameters(p)["Prompt"] for p in written[1:]]
    assert prompts == ["green star"] * 3 + ["red circle"] * 3
    assert [png_parameters(p)["Seed"] for p in written[1:]] == [str(10 + i) for i in range(6)]
    assert png_parameters(written[1])["CFG scale"] == "3.0"
    assert Image.open(written[0]).size == (3 * TILE + 2, 2 * TILE + 2)  # three images a row, a row per class


def test_the_same_seed_makes_the_same_class_image_again_alone(named_model, tmp_path):
    runs = []
    for index, flags in enumerate([["--classes", "1", "2", "--n_samples", "2", "--seed", "0"],
                                   ["--classes", "2", "--n_samples", "1", "--seed", "3"]]):
        outdir = tmp_path / f"out{index}"
        assert main_exit_code(SCRIPT, [*named_model, *flags, "--steps", "4", "--outdir", str(outdir),
                                       "--skip_grid"]) == 0
        runs.append([np.asarray(Image.open(p), dtype=int) for p in files_under(outdir)])
    assert np.abs(runs[0][3] - runs[1][0]).max() <= 1


def _bad_inputs(models, named_model, tmp_path):
    tiny = ["--ckpt", str(models["class"].ckpt), "--config", str(models["class"].config)]
    return [
        ([*named_model, "--classes", str(TINY_CLASSES)], rf"--classes: class {TINY_CLASSES} is out of range; "
                                                        rf"this model has classes 0 to {TINY_CLASSES - 1}"),
        ([*named_model, "--classes", "purple star"], r"--classes: unknown class 'purple star'; give a number"),
        ([*tiny, "--classes", "red circle"], r"the model has no class names \(put them in <checkpoint>\.classes\.txt"),
        ([*tiny, "--class_names", str(tmp_path / "none.txt")], r"--class_names: file not found: .*none\.txt"),
        ([*tiny, "--n_samples", "0"], r"--n_samples must be at least 1, got 0"),
        ([*tiny, "--batch_size", "0"], r"--batch_size must be at least 1, got 0"),
        ([*tiny, "--steps", "3"], r"--steps 3 does not fit the original 'uniform' DDIM grid"),
        (["--ckpt", str(models["ddpm"].ckpt), "--config", str(models["ddpm"].config)],
         r"class sampling needs a class-conditional model, but .* is an unconditional model; use "
         r"scripts/sample_diffusion\.py"),
        (["--ckpt", str(tmp_path / "missing.ckpt"), "--config", str(models["class"].config)],
         r"--ckpt: file not found: .*missing\.ckpt"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_sampling_models, named_model, tmp_path, capsys):
    cases = [(argv if "--steps" in argv else [*argv, "--steps", "4"], pattern)
             for argv, pattern in _bad_inputs(tiny_sampling_models, named_model, tmp_path)]
    failures = bad_input_failures(SCRIPT, cases, "--outdir", tmp_path, capsys)
    assert not failures, "\n".join(failures)
