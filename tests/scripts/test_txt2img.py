"""scripts/txt2img.py end to end on a tiny random-weight model: in subprocesses (as users run it)
and, for further flag combinations, through its ``main`` in this process (same code, no
interpreter start-up)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.util import instantiate_from_config, load_checkpoint, save_checkpoint
from tests.scripts.helpers import REPO_ROOT, files_under, main_exit_code, png_parameters, run_script

COMMON = ["--steps", "2", "--H", "32", "--W", "32", "--scale", "5.0"]


@pytest.fixture(scope="module")
def first_runs(tiny_models, tmp_path_factory):
    """One batch of two images (seeds 100, 101), then the same seeds one image per batch into the
    same folder."""
    outdir = tmp_path_factory.mktemp("txt2img")
    model = tiny_models["txt2img"].flags()
    batch = run_script("txt2img.py", "--prompt", "a red circle", "--negative_prompt", "blurry, dark",
                       "--n_samples", "2", "--n_iter", "1", "--seed", "100", "--outdir", str(outdir),
                       *COMMON, *model)
    singles = run_script("txt2img.py", "--prompt", "a red circle", "--negative_prompt", "blurry, dark",
                         "--n_samples", "1", "--n_iter", "2", "--seed", "100", "--outdir", str(outdir),
                         *COMMON, *model)
    return outdir, batch, singles


def test_writes_numbered_samples_and_grids_without_overwriting(first_runs):
    outdir, batch, singles = first_runs
    assert batch.returncode == 0, batch.stderr
    assert singles.returncode == 0, singles.stderr
    assert [p.relative_to(outdir).as_posix() for p in files_under(outdir)] == [
        "grid-0000.png", "grid-0001.png",
        "samples/00000.png", "samples/00001.png", "samples/00002.png", "samples/00003.png"]
    assert Image.open(outdir / "samples" / "00000.png").size == (32, 32)
    assert Image.open(outdir / "grid-0000.png").size == (2 * 34 + 2, 34 + 2)  # 2 per row, padding 2
    assert Image.open(outdir / "grid-0001.png").size == (34 + 2, 2 * 34 + 2)  # n_rows = n_samples = 1


def test_png_parameters_parse_back_to_the_flags(first_runs, tiny_models):
    outdir, _, _ = first_runs
    parsed = png_parameters(outdir / "samples" / "00001.png")
    assert parsed["Prompt"] == "a red circle"
    assert parsed["Negative prompt"] == "blurry, dark"
    assert (parsed["Steps"], parsed["Sampler"], parsed["Seed"], parsed["Size"]) == ("2", "DDIM", "101", "32x32")
    assert float(parsed["CFG scale"]) == 5.0
    assert parsed["Model"] == "txt2img"
    assert len(parsed["Model hash"]) == 10
    assert png_parameters(outdir / "grid-0000.png")["Seed"] == "100"


def test_same_seed_gives_identical_bytes_whatever_the_batch_size(first_runs):
    outdir, _, _ = first_runs
    samples = outdir / "samples"
    assert (samples / "00000.png").read_bytes() == (samples / "00002.png").read_bytes()
    assert (samples / "00001.png").read_bytes() == (samples / "00003.png").read_bytes()


def test_different_seeds_give_different_images(first_runs):
    outdir, _, _ = first_runs
    first, second = (np.asarray(Image.open(outdir / "samples" / f"0000{i}.png")) for i in (0, 1))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 1.0


def test_prompt_file_plms_no_guidance_and_skip_grid(tiny_models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    outdir = tmp_path / "out"
    code = main_exit_code("txt2img.py", [
        "--from-file", str(prompts), "--repeat", "2", "--n_samples", "3", "--n_iter", "1", "--plms",
        "--scale", "1", "--skip_grid", "--fixed_code", "--steps", "4", "--H", "16", "--W", "24",
        "--outdir", str(outdir), *tiny_models["txt2img"].flags()])
    assert code == 0, capsys.readouterr().err
    written = files_under(outdir)
    assert [p.name for p in written] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    parsed = [png_parameters(p) for p in written]
    assert [p["Prompt"] for p in parsed] == ["a red circle", "a red circle", "a blue square", "a blue square"]
    assert [p["Seed"] for p in parsed] == ["42", "43", "44", "42"]  # fixed code: seed + position in batch
    assert {p["Sampler"] for p in parsed} == {"PLMS"} and {p["Size"] for p in parsed} == {"24x16"}
    assert "sampling" in capsys.readouterr().err  # the per-step progress bar


def test_ema_flags_choose_between_the_checkpoints_weights(tiny_models, tmp_path, capsys):
    """A checkpoint with EMA weights that differ from its plain ones: by default (config use_ema)
    and with --ema the EMA weights sample, with --no-ema the plain ones."""
    config = OmegaConf.load(tiny_models["txt2img"].config)
    config.model.params.use_ema = True
    model = instantiate_from_config(config.model)
    model.load_state_dict(load_checkpoint(str(tiny_models["txt2img"].ckpt))[0], strict=False)
    state = model.state_dict()
    with torch.no_grad():
        for key in state:
            if key.startswith("model_ema.") and state[key].is_floating_point() and state[key].ndim > 0:
                state[key] = state[key] * 1.5
    save_checkpoint(state, str(tmp_path / "ema.ckpt"))
    OmegaConf.save(config, tmp_path / "ema.yaml")
    images = {}
    for name, flags in (("default", []), ("ema", ["--ema"]), ("no_ema", ["--no-ema"])):
        code = main_exit_code("txt2img.py", [*flags, "--config", str(tmp_path / "ema.yaml"), "--ckpt",
                                             str(tmp_path / "ema.ckpt"), "--steps", "2", "--H", "16", "--W", "16",
                                             "--n_samples", "1", "--n_iter", "1", "--outdir", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
        images[name] = (tmp_path / name / "samples" / "00000.png").read_bytes()
    assert images["default"] == images["ema"]
    assert images["no_ema"] != images["ema"]


# Run as a user runs the script; then list which of the training-only packages were imported
# (issue 24: importing Lightning, which pulls torchmetrics and torch._dynamo, cost about 3 s of
# every command).
IMPORTS_PROBE = """
import runpy, sys
sys.argv = ["scripts/txt2img.py", *sys.argv[1:]]
try:
    runpy.run_path("scripts/txt2img.py", run_name="__main__")
except SystemExit as stop:
    if stop.code:
        raise
print("imported:", sorted(m for m in ("pytorch_lightning", "lightning_fabric", "torchmetrics", "torch._dynamo")
                          if m in sys.modules))
"""


@pytest.mark.parametrize("model, imported", [
    ("shipped default", []),
    # its CLIP text encoder is a local directory, loaded into transformers' CLIPTextModel, which imports
    # torch._dynamo itself (masking_utils); the known hub names use our own text model
    ("tiny CLIP-conditioned", ["torch._dynamo"]),
])
def test_generating_imports_no_lightning_and_no_torch_dynamo_of_ours(model, imported, tiny_models, tmp_path):
    flags = [] if model == "shipped default" else tiny_models["txt2img"].flags() + ["--H", "32", "--W", "32"]
    done = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, "--prompt", "a red circle", "--steps", "1",
                           "--n_samples", "1", "--n_iter", "1", "--device", "cpu", "--outdir", str(tmp_path), *flags],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert files_under(tmp_path), "nothing was generated"
    assert done.stdout.splitlines()[-1] == f"imported: {imported}"
