"""scripts/sample_diffusion.py on tiny models: the CompVis script's flags and output layout
(<logdir>/samples/<step>/<time>/img/sample_NNNNNN.png, numpy/NxHxWxC-samples.npz, sampling_config.yaml),
per-image seeds, a main.py logdir as -r, and one-line errors that write nothing."""
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from ldm.inference import tasks
from tests.scripts.helpers import bad_input_failures, files_under, main_exit_code, png_parameters
from tests.tiny_configs import tiny_ddpm_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SCRIPT = "sample_diffusion.py"


def _sample(model, extra, logdir):
    """Run the script on ``model`` writing under ``logdir`` (``-l``); the time folder it made."""
    code = main_exit_code(SCRIPT, ["-r", str(model.ckpt), "-l", str(logdir), *extra])
    assert code == 0
    runs = sorted((logdir / model.ckpt.parent.name / "samples").glob("*/*"))
    return runs[-1]


def _npz(run):
    (path,) = (run / "numpy").glob("*.npz")
    with np.load(path) as loaded:
        return path.name, loaded["arr_0"]


def test_the_originals_layout_with_parameters_in_every_png_and_all_samples_in_the_npz(tiny_sampling_models, tmp_path):
    model = tiny_sampling_models["ddpm"]
    run = _sample(model, ["-n", "5", "--batch_size", "2", "-c", "4", "--seed", "3"], tmp_path)
    assert run.parent == tmp_path / model.ckpt.parent.name / "samples" / "00000001"  # the checkpoint's global step
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d", run.name)
    pngs = sorted((run / "img").iterdir())
    assert [p.name for p in pngs] == [f"sample_{i:06}.png" for i in range(5)]
    name, samples = _npz(run)
    assert name == "5x16x16x3-samples.npz" and samples.dtype == np.uint8
    for png, sample in zip(pngs, samples):
        assert np.array_equal(np.asarray(Image.open(png)), sample)
    parameters = [png_parameters(p) for p in pngs]
    assert [p["Seed"] for p in parameters] == ["3", "4", "5", "6", "7"]
    assert (parameters[0]["Sampler"], parameters[0]["Steps"], parameters[0]["Eta"]) == ("DDIM", "4", "1.0")
    recorded = yaml.safe_load((run / "sampling_config.yaml").read_text())
    assert (recorded["n_samples"], recorded["eta"], recorded["custom_steps"], recorded["seed"]) == (5, 1.0, 4, 3)
    assert recorded["vanilla_sample"] is False and recorded["sampler"] == "ddim"


def test_each_image_depends_only_on_its_seed_not_the_batch_size(tiny_sampling_models, tmp_path):
    model = tiny_sampling_models["unconditional_ldm"]
    _, batched = _npz(_sample(model, ["-n", "3", "--batch_size", "3", "-c", "4", "--sampler", "dpmpp_2m"],
                              tmp_path / "a"))
    _, single = _npz(_sample(model, ["-n", "3", "--batch_size", "1", "-c", "4", "--sampler", "dpmpp_2m"],
                             tmp_path / "b"))
    assert np.abs(batched.astype(int) - single.astype(int)).max() <= 1
    assert np.abs(batched[0].astype(int) - batched[1].astype(int)).max() > 10


def test_a_rerun_writes_a_new_folder_and_keeps_the_old_one(tiny_sampling_models, tmp_path):
    model = tiny_sampling_models["ddpm"]
    first = _sample(model, ["-n", "1", "-c", "4"], tmp_path)
    before = {p: p.read_bytes() for p in files_under(first)}
    second = _sample(model, ["-n", "1", "-c", "4"], tmp_path)
    assert second != first and {p: p.read_bytes() for p in files_under(first)} == before
    assert np.array_equal(_npz(first)[1], _npz(second)[1])


def _train_two_steps(root: Path) -> Path:
    """A main.py run of a tiny DDPM (20 timesteps) on 16x16 shapes, two steps; its logdir."""
    from ldm.training.run import run

    config = {"model": {"base_learning_rate": 1e-4, **tiny_ddpm_config(timesteps=20, use_ema=True)},
              "data": {"target": "main.DataModuleFromConfig",
                       "params": {"batch_size": 2, "num_workers": 0,
                                  "train": {"target": "ldm.data.shapes.ShapesDataset",
                                            "params": {"length": 4, "size": 16, "two_object_p": 0.0}}}},
              "lightning": {"trainer": {"max_steps": 2, "enable_progress_bar": False,
                                        "enable_model_summary": False},
                            "callbacks": {"image_logger": {"target": "main.ImageLogger",
                                                           "params": {"batch_frequency": 1000, "disabled": True}}}}}
    OmegaConf.save(OmegaConf.create(config), root / "tiny-ddpm.yaml")
    result = run(["--base", str(root / "tiny-ddpm.yaml"), "-t", "--accelerator", "cpu", "-l", str(root / "logs"),
                  "-n", "tiny"])
    return Path(result.paths.logdir)


def test_a_main_py_logdir_is_sampled_from_its_last_checkpoint_and_config(tmp_path, capsys):
    logdir = _train_two_steps(tmp_path)
    assert main_exit_code(SCRIPT, ["-r", str(logdir), "-n", "2", "-v"]) == 0, capsys.readouterr().err
    (run,) = (logdir / "samples" / "00000002").iterdir()
    _, samples = _npz(run)
    assert samples.shape == (2, 16, 16, 3)
    parameters = png_parameters(run / "img" / "sample_000001.png")
    assert (parameters["Sampler"], parameters["Steps"], parameters["Seed"]) == ("DDPM", "20", "43")
    assert "Eta" not in parameters
    assert yaml.safe_load((run / "sampling_config.yaml").read_text())["ckpt"] == str(logdir / "checkpoints" /
                                                                                     "last.ckpt")


def _bad_inputs(models, tmp_path):
    ddpm = ["-r", str(models["ddpm"].ckpt)]
    return [
        (["-r", str(tmp_path / "missing.ckpt")], r"-r/--resume: not found: .*missing\.ckpt"),
        ([*ddpm, "-n", "0"], r"--n_samples must be at least 1, got 0"),
        ([*ddpm, "--batch_size", "0"], r"--batch_size must be at least 1, got 0"),
        ([*ddpm, "-c", "0"], r"--steps must be at least 1, got 0"),
        ([*ddpm, "-e", "-1"], r"--ddim_eta must be a finite number >= 0, got -1"),
        ([*ddpm, "--sampler", "k_dpm_fast"], r"unknown sampler 'k_dpm_fast'"),
        ([*ddpm, "-v", "--sampler", "euler"], r"-v/--vanilla_sample is the ddpm sampler on every timestep"),
        ([*ddpm, "--sampler", "heun", "-e", "0.5"], r"the heun sampler does not support eta"),
        ([*ddpm, "--seed", "-2"], r"--seed must be -1 \(random\) or at least 0, got -2"),
        (["-r", str(models["class"].ckpt)], r"unconditional sampling needs an unconditional model, but .* is a "
                                           r"class-conditional model; use scripts/sample_class\.py"),
        (["-r", str(tmp_path)], r"holds neither checkpoints/last\.ckpt \(a main\.py logdir\) nor model\.ckpt"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_sampling_models, tmp_path, capsys):
    failures = bad_input_failures(SCRIPT, _bad_inputs(tiny_sampling_models, tmp_path), "-l", tmp_path, capsys)
    assert not failures, "\n".join(failures)


def test_a_text_model_is_refused_naming_txt2img(tiny_models, tmp_path, capsys):
    code = main_exit_code(SCRIPT, ["-r", str(tiny_models["txt2img"].ckpt), "-l", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "is a text-to-image model; use scripts/txt2img.py or scripts/img2img.py")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_keeps_the_pngs_written_and_leaves_no_npz(tiny_sampling_models, tmp_path, capsys, monkeypatch):
    generate = tasks.UnconditionalSampling.generate
    calls = []

    def interrupted_on_the_second_batch(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return generate(self, *args)

    monkeypatch.setattr(tasks.UnconditionalSampling, "generate", interrupted_on_the_second_batch)
    code = main_exit_code(SCRIPT, ["-r", str(tiny_sampling_models["ddpm"].ckpt), "-l", str(tmp_path), "-n", "4",
                                   "--batch_size", "2", "-c", "4"])
    assert code == 130
    (run,) = (tmp_path / tiny_sampling_models["ddpm"].ckpt.parent.name / "samples" / "00000001").iterdir()
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: 2 image(s) saved in {run / 'img'}"
    assert [p.relative_to(run).as_posix() for p in files_under(run)] == [
        "img/sample_000000.png", "img/sample_000001.png", "sampling_config.yaml"]
