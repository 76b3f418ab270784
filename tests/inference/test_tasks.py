"""The tasks of models without a prompt (ldm/inference/tasks.py): ``ldm.load("unconditional")`` and
``ldm.load("class")`` make what scripts/sample_diffusion.py and scripts/sample_class.py make, each
image from its own seed; every task refuses a model of another kind naming the script to use."""
import shutil

import numpy as np
import pytest
from PIL import Image

import ldm
from ldm.inference.api import prepare_run
from ldm.inference.errors import UsageError
from ldm.inference.loading import read_config, read_model_spec
from ldm.inference.parsers import default_options
from tests.scripts.helpers import TINY_CLASSES, files_under, main_exit_code, png_parameters

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _load(task, model):
    return ldm.load(task, ckpt=str(model.ckpt), config=str(model.config), device="cpu")


@pytest.fixture(scope="module")
def pipes(tiny_sampling_models):
    return {"ddpm": _load("unconditional", tiny_sampling_models["ddpm"]),
            "unconditional_ldm": _load("unconditional", tiny_sampling_models["unconditional_ldm"]),
            "class": _load("class", tiny_sampling_models["class"])}


def _pixels(image):
    return np.asarray(image, dtype=int)


@pytest.mark.parametrize("model", ["ddpm", "unconditional_ldm"])
def test_unconditional_images_come_from_their_own_seeds_whatever_the_batch(pipes, model):
    pipe = pipes[model]
    images = pipe(n=3, steps=4, seed=7, batch_size=2)
    alone = pipe(n=1, steps=4, seed=9)
    assert [png_parameters_of(image)["Seed"] for image in images] == ["7", "8", "9"]
    assert images[0].size == (16, 16)
    assert np.abs(_pixels(images[2]) - _pixels(alone[0])).max() <= 1
    assert np.abs(_pixels(images[0]) - _pixels(images[1])).max() > 10


def png_parameters_of(image):
    from ldm.inference.parameters import parse_parameters

    return parse_parameters(image.info["parameters"])


def test_unconditional_eta_is_1_with_ddim_as_the_original_and_absent_elsewhere(pipes):
    pipe = pipes["ddpm"]
    assert png_parameters_of(pipe(n=1, steps=2)[0])["Eta"] == "1.0"
    assert "Eta" not in png_parameters_of(pipe(n=1, steps=2, sampler="euler")[0])
    assert "Eta" not in png_parameters_of(pipe(n=1, steps=2, eta=0.0)[0])
    with pytest.raises(UsageError, match="the euler sampler does not support eta"):
        pipe(n=1, steps=2, sampler="euler", eta=0.5)


def test_vanilla_sampling_is_the_ddpm_sampler_on_every_timestep(tiny_sampling_models):
    model = tiny_sampling_models["ddpm"]
    opt = default_options("unconditional")
    opt.config, opt.ckpt, opt.vanilla_sample, opt.n_samples = str(model.config), str(model.ckpt), True, 2
    run = prepare_run("unconditional", opt, read_model_spec(read_config(opt.config)))
    assert (run.sampler, opt.steps, opt.ddim_eta, run.image_count) == ("ddpm", 1000, 0.0, 2)
    opt = default_options("unconditional")
    opt.config, opt.vanilla_sample, opt.sampler = str(model.config), True, "euler"
    with pytest.raises(UsageError, match="-v/--vanilla_sample is the ddpm sampler"):
        prepare_run("unconditional", opt, read_model_spec(read_config(opt.config)))


@pytest.mark.parametrize("keywords, message", [
    (dict(scale=3.0), "an unconditional model has no classifier-free guidance"),
    (dict(negative_prompt="blue"), "takes no negative prompt"),
    (dict(batch_size=0), "--batch_size must be at least 1, got 0"),
    (dict(n=0), "--n_samples must be at least 1, got 0"),
])
def test_options_an_unconditional_model_cannot_honour_are_refused(pipes, keywords, message):
    with pytest.raises(UsageError, match=message):
        pipes["ddpm"](**keywords)


def test_a_prompt_or_a_script_only_option_is_refused(pipes):
    with pytest.raises(UsageError, match="class sampling: a class-conditional model takes no prompt .*give --classes"):
        pipes["class"]("a red circle")
    with pytest.raises(UsageError, match="unconditional sampling: an unconditional model takes no prompt"):
        pipes["ddpm"]("a red circle")
    with pytest.raises(TypeError, match="unexpected keyword 'logdir'"):
        pipes["ddpm"](logdir="x")


def test_the_api_makes_the_same_class_images_and_parameters_as_the_script(pipes, tiny_sampling_models, tmp_path,
                                                                          capsys):
    model = tiny_sampling_models["class"]
    outdir = tmp_path / "out"
    flags = ["--classes", "1", "3", "--n_samples", "2", "--steps", "4", "--seed", "5", "--scale", "2.0",
             "--config", str(model.config), "--ckpt", str(model.ckpt), "--outdir", str(outdir), "--skip_grid"]
    assert main_exit_code("sample_class.py", flags) == 0, capsys.readouterr().err
    written = files_under(outdir)
    images = pipes["class"](classes=[1, 3], n=2, steps=4, seed=5, scale=2.0)
    assert len(images) == len(written) == 4
    for image, path in zip(images, written):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path)))
        assert image.info["parameters"] == Image.open(path).info["parameters"]
    assert [png_parameters(path)["Prompt"] for path in written] == ["1", "1", "3", "3"]
    assert png_parameters(written[3])["Seed"] == "8"


def test_each_class_conditions_the_images_and_guidance_changes_them(pipes):
    pipe = pipes["class"]
    first, other = pipe(classes=[0], n=1, steps=4, seed=1), pipe(classes=[2], n=1, steps=4, seed=1)
    unguided = pipe(classes=[0], n=1, steps=4, seed=1, scale=1.0)
    assert np.abs(_pixels(first[0]) - _pixels(other[0])).max() > 10
    assert np.abs(_pixels(first[0]) - _pixels(unguided[0])).max() > 10


def test_default_classes_spread_over_the_model_and_batches_follow_batch_size(pipes):
    images = pipes["class"](n=1, steps=2, seed=0)
    assert [png_parameters_of(image)["Prompt"] for image in images] == ["0", "1", "2", "3"]
    assert len(pipes["class"](classes=[0, 1], n=3, steps=2, batch_size=4)) == 6


def test_class_names_beside_the_checkpoint_select_and_name_the_classes(tiny_sampling_models, tmp_path):
    model = tiny_sampling_models["class"]
    ckpt, config = tmp_path / "named.ckpt", tmp_path / "named.yaml"
    shutil.copy(model.ckpt, ckpt)
    shutil.copy(model.config, config)
    (tmp_path / "named.classes.txt").write_text("red circle\nblue square\ngreen star\n", encoding="utf-8")
    pipe = ldm.load("class", ckpt=str(ckpt), config=str(config), device="cpu")
    images = pipe(classes=["Blue  Square", 3], n=1, steps=2)
    assert [png_parameters_of(image)["Prompt"] for image in images] == ["blue square", "3"]
    with pytest.raises(UsageError, match=f"class {TINY_CLASSES} is out of range; this model has classes 0 to 4"):
        pipe(classes=[TINY_CLASSES])
    with pytest.raises(UsageError, match="unknown class 'purple star'"):
        pipe(classes=["purple star"])


@pytest.mark.parametrize("task, model, script", [
    ("txt2img", "ddpm", "scripts/sample_diffusion.py"),
    ("inpaint", "unconditional_ldm", "scripts/sample_diffusion.py"),
    ("upscale", "class", "scripts/sample_class.py"),
    ("img2img", "class", "scripts/sample_class.py"),
    ("class", "ddpm", "scripts/sample_diffusion.py"),
    ("unconditional", "class", "scripts/sample_class.py"),
])
def test_each_task_refuses_a_model_of_another_kind_naming_the_script(tiny_sampling_models, task, model, script):
    paths = tiny_sampling_models[model]
    with pytest.raises(UsageError, match=f"is an? (unconditional|class-conditional) model; use {script}$"):
        ldm.load(task, ckpt=str(paths.ckpt), config=str(paths.config), device="cpu")


@pytest.mark.parametrize("task", ["unconditional", "class"])
def test_the_sampling_tasks_refuse_a_text_model(tiny_models, task):
    with pytest.raises(UsageError, match="is a text-to-image model; use scripts/txt2img.py or scripts/img2img.py"):
        ldm.load(task, ckpt=str(tiny_models["txt2img"].ckpt), config=str(tiny_models["txt2img"].config), device="cpu")
