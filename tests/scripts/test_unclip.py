"""scripts/unclip.py end to end on the SD 2.1 unCLIP-L and -H inference configs at toy size
(``tiny_unclip_config``): image variations, the Python API's same pixels, and one-line errors."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ldm
from tests.scripts.helpers import files_under, main_exit_code, png_parameters, write_test_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _pixels(path):
    return np.asarray(Image.open(path)).astype(int)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unclip_inputs")
    return [write_test_image(folder / f"in{seed}.png", size=(40, 36), seed=seed) for seed in (1, 2)]


@pytest.mark.parametrize("variant", ["l", "h"])
def test_the_tiny_models_are_the_original_configs_shrunk_with_the_original_names(tiny_unclip_models, variant):
    from ldm.util import checkpoint_tensor_shapes
    from tests.manifests import read_manifest

    def pattern(key):  # the name with block numbers left out: the tiny models have fewer blocks
        return re.sub(r"\.\d+\.", ".#.", re.sub(r"\.\d+\.", ".#.", key))

    original = {pattern(key) for key, _ in read_manifest(f"v2-1-stable-unclip-{variant}-inference")}
    tiny = {pattern(key) for key in checkpoint_tensor_shapes(str(tiny_unclip_models[f"unclip-{variant}"].ckpt))}
    assert tiny == original  # every kind of tensor of the original, and nothing else


def test_unclip_l_makes_variations_that_follow_the_image_and_the_noise_level(tiny_unclip_models, images, tmp_path,
                                                                              capsys):
    common = ["--steps", "4", "--n_samples", "2", "--n_iter", "1", "--seed", "7", "--H", "24", "--W", "32",
              "--prompt", "a photo", "--negative-prompt", "blur", *tiny_unclip_models["unclip-l"].flags()]
    runs = {"a": [images[0]], "b": [images[1]], "c": [images[0], "--noise_level", "900"]}
    for name, (image, *extra) in runs.items():
        argv = [*common, "--init-img", str(image), *extra, "--outdir", str(tmp_path / name)]
        assert main_exit_code("unclip.py", argv) == 0, capsys.readouterr().err
    assert [p.name for p in files_under(tmp_path / "a")] == ["grid-0000.png", "00000.png", "00001.png"]
    sample = tmp_path / "a" / "samples" / "00001.png"
    assert Image.open(sample).size == (32, 24)
    parsed = png_parameters(sample)
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"], parsed["Steps"], parsed["CFG scale"]) == \
        ("a photo", "blur", "8", "4", "10.0")
    assert (parsed["Noise level"], parsed["unCLIP"], parsed["Model"]) == ("0", "image variation", "unclip-l")
    first = _pixels(tmp_path / "a" / "samples" / "00000.png")
    assert np.abs(first - _pixels(tmp_path / "b" / "samples" / "00000.png")).mean() > 0.5  # another image
    assert np.abs(first - _pixels(tmp_path / "c" / "samples" / "00000.png")).mean() > 0.5  # another noise level


def test_the_api_makes_the_scripts_pixels_and_each_image_follows_its_own_seed(tiny_unclip_models, images, tmp_path,
                                                                              capsys):
    model = tiny_unclip_models["unclip-h"]
    argv = ["--init-img", str(images[0]), "--steps", "2", "--seed", "3", "--noise_level", "100", "--skip_grid",
            "--outdir", str(tmp_path), *model.flags()]
    assert main_exit_code("unclip.py", argv) == 0, capsys.readouterr().err
    written = files_under(tmp_path)
    assert len(written) == 4  # the demo's 2 x 2 images
    pipe = ldm.load("unclip", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    made = pipe(prompt="", image=str(images[0]), steps=2, seed=3, noise_level=100, n=4)
    for image, path in zip(made, written):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path)))
        assert image.info["parameters"] == Image.open(path).info["parameters"]
    alone = pipe(prompt="", image=Image.open(images[0]), steps=2, seed=5, noise_level=100, n=1)[0]
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(made[2], dtype=int)).max() <= 1


def _error_cases(models, image):
    unclip_l, unclip_h = models["unclip-l"].flags(), models["unclip-h"].flags()
    prior = ["--prior-config", "p.yaml", "--prior-ckpt", "p.ckpt", "--prior-clip", "ViT-L-14.pt",
             "--prior-clip-stats", "stats.th"]
    return [
        ("unclip.py", unclip_l, r"--init-img is required: the image to make variations of"),
        ("unclip.py", [*unclip_l, "--init-img", "missing.png"], r"--init-img: file not found: missing\.png"),
        ("unclip.py", [*unclip_h, "--prior-config", "p.yaml", "--prompt", "a cat"],
         r"the Karlo prior needs --prior-ckpt, --prior-clip, --prior-clip-stats too"),
        ("unclip.py", [*unclip_l, *prior, "--prompt", "a cat", "--init-img", image],
         r"--init-img and the --prior-\* flags both given"),
        ("unclip.py", [*unclip_l, *prior], r"--prompt is required with the Karlo prior"),
        ("unclip.py", [*unclip_l, *prior, "--prompt", "a cat", "--prior-steps", "0"],
         r"--prior-steps must be at least 1, got 0"),
        ("unclip.py", [*unclip_l, *prior, "--prompt", "a cat"], r"--prior-config: file not found: p\.yaml"),
        ("unclip.py", [*unclip_l, "--init-img", image, "--noise_level", "1000"],
         r"--noise_level must be in \[0, 999\] for this model, got 1000"),
        ("unclip.py", ["--config", "checkpoints/shapes-txt2img.yaml", "--ckpt",
                       "checkpoints/shapes-txt2img.safetensors", "--init-img", image],
         r"unclip needs an unCLIP .* model, but .*shapes-txt2img\.yaml is a text-to-image model; "
         r"use scripts/txt2img\.py"),
        ("txt2img.py", unclip_l, r"txt2img needs a text-to-image model, but .*unclip-l\.yaml is an unCLIP .*model; "
                                 r"use scripts/unclip\.py"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_unclip_models, images, tmp_path, capsys):
    for index, (script, argv, message) in enumerate(_error_cases(tiny_unclip_models, str(images[0]))):
        outdir = tmp_path / str(index)
        code = main_exit_code(script, [*argv, "--outdir", str(outdir)])
        lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
        assert code == 2, (argv, lines)
        assert re.search(message, lines[-1]), (argv, lines[-1])
        assert lines[-1].startswith(f"{script}: error: ")
        assert files_under(outdir) == []


@pytest.fixture(scope="module")
def karlo_flags(tmp_path_factory):
    """--prior-* flags of a tiny Karlo prior (32-d, the tiny unCLIP-L's embedding width), random weights."""
    from tests.modules.karlo.tiny import write_tiny_karlo_files

    files = write_tiny_karlo_files(tmp_path_factory.mktemp("karlo"))
    return ["--prior-config", files["config"], "--prior-ckpt", files["ckpt"], "--prior-clip", files["clip"],
            "--prior-clip-stats", files["clip_stats"]]


def test_unclip_l_makes_images_of_a_prompt_through_the_karlo_prior(tiny_unclip_models, karlo_flags, tmp_path, capsys):
    model = tiny_unclip_models["unclip-l"]
    common = [*model.flags(), *karlo_flags, "--prompt", "a red fox", "--steps", "2", "--prior-steps", "3",
              "--n_samples", "2", "--n_iter", "1", "--seed", "4", "--noise_level", "10", "--skip_grid"]
    for name, extra in {"a": [], "b": ["--prior-scale", "1.5"]}.items():
        argv = [*common, *extra, "--outdir", str(tmp_path / name)]
        assert main_exit_code("unclip.py", argv) == 0, capsys.readouterr().err
    sample = tmp_path / "a" / "samples" / "00001.png"
    parsed = png_parameters(sample)
    assert (parsed["Prompt"], parsed["Seed"], parsed["unCLIP"], parsed["Prior steps"], parsed["Prior CFG scale"]) == \
        ("a red fox", "5", "Karlo prior", "3", "4.0")
    assert parsed["Prior"] == Path(karlo_flags[3]).stem
    # only the prior's guidance differs: the prior's embedding conditions the images
    assert np.abs(_pixels(sample) - _pixels(tmp_path / "b" / "samples" / "00001.png")).mean() > 0.5
    keywords = dict(zip((flag[2:].replace("-", "_") for flag in karlo_flags[::2]), karlo_flags[1::2]))
    pipe = ldm.load("unclip", ckpt=str(model.ckpt), config=str(model.config), device="cpu")
    alone = pipe("a red fox", steps=2, prior_steps=3, seed=5, n=1, noise_level=10, **keywords)[0]
    assert np.abs(np.asarray(alone, dtype=int) - _pixels(sample)).max() <= 1  # image 2 made alone from its seed


@pytest.mark.parametrize("model, extra, message", [
    ("unclip-h", ["--prior-steps", "2"],
     r"the Karlo prior makes 32-d image embeddings but --config .*unclip-h\.yaml takes 64-d ones; the prior fits unCLIP-L"),
    ("unclip-l", ["--prior-steps", "5000"], r"--prior-steps must be at most 1000 \(the prior's diffusion steps\)"),
])
def test_what_the_loaded_prior_refuses_is_one_line(tiny_unclip_models, karlo_flags, tmp_path, capsys, model, extra,
                                                   message):
    argv = [*tiny_unclip_models[model].flags(), *karlo_flags, "--prompt", "a red fox", "--steps", "2", *extra,
            "--outdir", str(tmp_path)]
    assert main_exit_code("unclip.py", argv) == 2
    error = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()][-1]
    assert re.search(message, error), error
    assert files_under(tmp_path) == []
