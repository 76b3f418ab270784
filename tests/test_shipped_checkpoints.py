"""The small models shipped in checkpoints/ (docs/SHAPES.md): each loads strictly into its config,
they stay under the size budget, every script runs on its default model with no model flag, and
the default text-to-image and class-conditional models draw what they are asked for (end to end on
CPU, 20 DPM-Solver steps, seeded)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

import ldm
from ldm.evaluation import benchmarks, generation
from ldm.evaluation.adherence import PromptCase, mirrored, score_image
from ldm.evaluation.detector import detect_objects
from ldm.util import load_model_from_config
from tests.scripts.helpers import run_script

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
AUTOENCODER = "shapes-autoencoder-kl-f4"
DARK_VAE = "shapes-autoencoder-kl-f4-dark"   # the autoencoder with a decoder that also draws the dark style
DARK_LORA = "lora/shapes-dark"               # a LoRA on shapes-txt2img: the dark style (configs/shapes/lora-style.yaml)
DIFFUSION_MODELS = ["shapes-txt2img", "shapes-inpainting", "shapes-depth", "shapes-x4-upscaler",
                    "shapes-class-conditional"]
PIXEL_MODELS = ["shapes-pixel-ddpm"]
SHIPPED = [AUTOENCODER, DARK_VAE, *DIFFUSION_MODELS, *PIXEL_MODELS]
SIZE_BUDGET_BYTES = 80 * 10 ** 6


@pytest.fixture(scope="module")
def txt2img_pipe():
    """The default text-to-image pipeline (``ldm.load("txt2img")``: the shipped model)."""
    return ldm.load("txt2img", device="cpu")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_strictly_into_its_config(name):
    config = OmegaConf.load(CHECKPOINTS / f"{name}.yaml")
    model = load_model_from_config(config, str(CHECKPOINTS / f"{name}.safetensors"), device="cpu",
                                   verbose=False, strict=True)
    assert not model.training


@pytest.mark.parametrize("name", DIFFUSION_MODELS)
def test_diffusion_models_share_the_shipped_autoencoder(name):
    config = OmegaConf.load(CHECKPOINTS / f"{name}.yaml")
    assert config.model.params.first_stage_config.params.ckpt_path == f"checkpoints/{AUTOENCODER}.safetensors"
    with safe_open(str(CHECKPOINTS / f"{name}.safetensors"), framework="pt") as handle:
        assert not any(k.startswith("first_stage_model.") for k in handle.keys())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_are_half_precision(name):
    with safe_open(str(CHECKPOINTS / f"{name}.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys() if "weight" in k}
    assert dtypes == {"F16"}


def test_shipped_models_fit_the_size_budget():
    total = sum((CHECKPOINTS / f"{name}.safetensors").stat().st_size for name in [*SHIPPED, DARK_LORA])
    assert total < SIZE_BUDGET_BYTES


def test_the_dark_vae_keeps_the_latent_space_and_decodes_dark_renders_dark():
    """Only its decoder side differs from the shipped autoencoder's, so every shipped model's latents
    stay valid; it gives dark renders back dark, where the shipped decoder greys their backgrounds."""
    from ldm.data.shapes import ShapesDataset
    from ldm.evaluation.shipping import LATENT_SPACE_PREFIXES
    from ldm.evaluation.style import background_value

    shipped, dark = (load_model_from_config(OmegaConf.load(CHECKPOINTS / f"{name}.yaml"),
                                            str(CHECKPOINTS / f"{name}.safetensors"), device="cpu", verbose=False)
                     for name in (AUTOENCODER, DARK_VAE))
    dark_weights = dark.state_dict()
    for key, value in shipped.state_dict().items():
        assert torch.equal(value, dark_weights[key]) == key.startswith(LATENT_SPACE_PREFIXES), key
    renders = ShapesDataset(length=8, split="test", style="dark")
    images = torch.stack([torch.from_numpy(renders[i]["image"]).permute(2, 0, 1) for i in range(8)])

    def background(decoder_of):
        with torch.no_grad():
            decoded = decoder_of.decode(shipped.encode(images).mode())
        pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return np.array([background_value(image) for image in pixels])

    assert background(dark).max() < 0.05 < background(shipped).min()


def test_the_dark_lora_draws_the_prompt_in_the_dark_style_with_the_dark_vae(txt2img_pipe):
    """The shipped LoRA at weight 1 with the dark VAE: dark backgrounds (docs/LORA.md measures 72
    prompts); the prompted colour and shape stay. Without them, the base model's images."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from ldm.evaluation.style import shows_dark_style

    styled = ldm.load("txt2img", device="cpu", vae=f"checkpoints/{DARK_VAE}.safetensors",
                      lora=f"checkpoints/{DARK_LORA}.safetensors")
    prompts = [p for p, _, _ in PROMPTS]
    images = generation.txt2img(styled, prompts, seed=1234, steps=20, scale=5.0)
    assert sum(shows_dark_style(image) for image in images) >= 3
    drawn = [(objects[0].colour, objects[0].shape) if objects else None
             for objects in map(detect_objects, images)]
    assert sum(d == (colour, shape) for d, (_, colour, shape) in zip(drawn, PROMPTS)) >= 3, drawn
    plain = generation.txt2img(txt2img_pipe, prompts, seed=1234, steps=20, scale=5.0)
    assert not any(shows_dark_style(image) for image in plain)


PROMPTS = [("a red circle", "red", "circle"), ("a blue square", "blue", "square"),
           ("a yellow star", "yellow", "star"), ("an orange triangle", "orange", "triangle")]


def test_default_txt2img_pipe_draws_the_prompted_colour_and_shape(txt2img_pipe):
    """Three seeded images per prompt; at least two of each must show the prompted colour and
    shape (the model gets all 80 seen single-object prompts of the evaluation right,
    docs/SHAPES.md; one miss is allowed so that the test is not brittle)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    repeats = 3
    prompts = [p for p, _, _ in PROMPTS for _ in range(repeats)]
    images = generation.txt2img(txt2img_pipe, prompts, seed=1234, steps=20, scale=5.0)
    for index, (prompt, colour, shape) in enumerate(PROMPTS):
        drawn = []
        for image in images[index * repeats:(index + 1) * repeats]:
            objects = detect_objects(image)
            drawn.append((objects[0].colour, objects[0].shape) if objects else None)
        assert drawn.count((colour, shape)) >= 2, (prompt, drawn)


def test_default_class_conditional_pipe_draws_the_asked_classes():
    """Three seeded images of each of four classes; at least two of each show the class's colour
    and shape (the model gets 100% of colours and 99% of shapes of 96 images right, docs/SHAPES.md)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from ldm.data.shapes import CLASS_NAMES

    pipe = ldm.load("class", device="cpu")
    labels = [CLASS_NAMES.index(name) for name in ("red circle", "blue square", "yellow star", "orange triangle")]
    images = generation.class_samples(pipe, [label for label in labels for _ in range(3)], seed=1234)
    for index, label in enumerate(labels):
        drawn = []
        for image in images[index * 3:(index + 1) * 3]:
            objects = detect_objects(image)
            drawn.append(f"{objects[0].colour} {objects[0].shape}" if objects else None)
        assert drawn.count(CLASS_NAMES[label]) >= 2, (CLASS_NAMES[label], drawn)


RELATION_PROMPTS = [(("red", "circle"), "above", ("blue", "square")),
                    (("green", "star"), "to the left of", ("purple", "triangle")),
                    (("yellow", "square"), "below", ("orange", "circle")),
                    (("blue", "triangle"), "to the right of", ("red", "star"))]


def test_default_txt2img_pipe_puts_two_objects_in_the_prompted_relation(txt2img_pipe):
    """Four prompts and their mirrors (opposite relation), two images each (16 images, one seed
    each from 99 on): at least 14 have both colours in the prompted relation (the model follows
    the relation word in 100% of the 96 two-object prompts of the evaluation, docs/SHAPES.md),
    so a model whose layout follows the starting noise fails (the session-2 model: 9 of 16)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cases = [PromptCase((first, second), relation) for first, relation, second in RELATION_PROMPTS]
    cases = [c for case in cases for c in (case, mirrored(case)) for _ in range(2)]
    images = generation.txt2img(txt2img_pipe, [c.text for c in cases], seed=99, steps=20, scale=5.0)
    positions = [score_image(case, image).position for case, image in zip(cases, images)]
    assert sum(positions) >= 14, list(zip([c.text for c in cases], positions))


def test_without_a_prompt_the_shipped_model_draws_a_prompt_it_understands(txt2img_pipe):
    """The scripts' original default prompts ("an astronaut riding a triceratops") mean nothing to
    the shapes model; with it, the default is a shapes prompt."""
    image = txt2img_pipe(n=1, steps=20, scale=5.0, seed=0)[0]
    assert image.info["parameters"].startswith("a red circle above a blue square\n")
    case = PromptCase((("red", "circle"), ("blue", "square")), "above")
    assert score_image(case, np.asarray(image)).position


def test_inpainting_evaluation_is_reproducible():
    """The same seed gives the same inpaintings: the masked image's latent, a posterior sample,
    is drawn from the seeded generator too (it was not, and reported numbers moved run to run)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = ldm.load("inpaint", device="cpu")
    first, second = (benchmarks.inpainting_accuracy(pipe, count=2, steps=2) for _ in range(2))
    assert first.numbers == second.numbers


def test_relation_sensitivity_runs_end_to_end_on_the_default_model(txt2img_pipe):
    """Prompt pairs and their mirrors are drawn, detected and summarised into fractions."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    report = benchmarks.relation_sensitivity(txt2img_pipe, count=4, steps=4)
    numbers = report.numbers
    assert 0 <= numbers["pairs_judged"] <= 4
    for name in ("position", "mirrored_position"):
        assert numbers[name] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert "same layout, same noise" in report.markdown()


def _saved_images(folder: Path):
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_readme_first_command_runs_on_the_default_model_from_any_directory(tmp_path):
    run = run_script("txt2img.py", "--prompt", "a red circle above a blue square", "--n_samples", "2",
                     "--n_iter", "1", "--steps", "10", "--outdir", str(tmp_path / "out"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    images = _saved_images(tmp_path / "out" / "samples")
    assert len(images) == 2 and images[0].shape == (64, 64, 3)


@pytest.mark.parametrize("script, inputs", [
    ("img2img.py", ["--init-img", "{image}", "--strength", "0.5"]),
    ("inpaint.py", ["--init-img", "{image}", "--mask", "{mask}"]),
    ("depth2img.py", ["--init-img", "{image}"]),
    ("upscale.py", ["--init-img", "{small}"]),
])
def test_every_script_runs_on_its_default_model(tmp_path, script, inputs):
    from ldm.data.shapes import ShapesDataset

    example = ShapesDataset(length=1, split="test")[0]
    paths = {"image": tmp_path / "image.png", "mask": tmp_path / "mask.png", "small": tmp_path / "small.png"}
    Image.fromarray(((example["image"] + 1) * 127.5).round().astype(np.uint8)).save(paths["image"])
    Image.fromarray((example["mask"][..., 0] * 255).astype(np.uint8)).save(paths["mask"])
    Image.fromarray(((example["lr"] + 1) * 127.5).round().astype(np.uint8)).save(paths["small"])
    args = [a.format(**{k: str(v) for k, v in paths.items()}) for a in inputs]
    run = run_script(script, *args, "--prompt", example["txt"], "--n_samples", "1", "--n_iter", "1",
                     "--steps", "10", "--outdir", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert list((tmp_path / "out").rglob("*.png"))


def test_a_prompt_with_words_the_shipped_model_does_not_know_gets_one_warning_line(tmp_path):
    run = run_script("txt2img.py", "--prompt", "an astronaut riding a red circle", "--n_samples", "2", "--n_iter",
                     "2", "--steps", "2", "--outdir", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    warnings = [line for line in re.split(r"[\r\n]", run.stderr) if "warning:" in line]
    assert warnings == ["txt2img.py: warning: the shapes text encoder does not know 'astronaut', 'riding': ignored "
                        "(read as 'unknown') in 'an astronaut riding a red circle'; it knows colours, shapes, sizes "
                        "and relations, e.g. 'a red circle above a blue square'"]


def test_sample_class_runs_on_its_default_model(tmp_path):
    run = run_script("sample_class.py", "--n_samples", "1", "--steps", "4", "--outdir", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert len(_saved_images(tmp_path / "out" / "samples")) == 4  # four classes spread over the 24


def test_sample_diffusion_runs_on_its_default_model(tmp_path):
    run = run_script("sample_diffusion.py", "-n", "2", "--batch_size", "2", "-c", "4", "-l", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    images = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").rglob("sample_*.png"))]
    assert len(images) == 2 and images[0].shape == (32, 32, 3)
    assert len(list((tmp_path / "out").rglob("*-samples.npz"))) == 1
