"""The small models shipped in checkpoints/ (docs/SHAPES.md): each loads strictly into its config,
they stay under the size budget, and the default text-to-image model draws what it is asked for
(end to end on CPU, 20 DPM-Solver steps, seeded)."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from ldm.evaluation import generation
from ldm.evaluation.detector import detect_objects
from ldm.util import load_model_from_config

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = ["shapes-autoencoder-kl-f4", "shapes-txt2img", "shapes-inpainting", "shapes-depth", "shapes-x4-upscaler"]
SIZE_BUDGET_MB = 60


@pytest.fixture(scope="module")
def txt2img_model():
    return load_model_from_config(OmegaConf.load(CHECKPOINTS / "shapes-txt2img.yaml"),
                                  str(CHECKPOINTS / "shapes-txt2img.safetensors"), device="cpu", verbose=False)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_strictly_into_its_config(name):
    config = OmegaConf.load(CHECKPOINTS / f"{name}.yaml")
    model = load_model_from_config(config, str(CHECKPOINTS / f"{name}.safetensors"), device="cpu",
                                   verbose=False, strict=True)
    assert not model.training


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_are_half_precision(name):
    with safe_open(str(CHECKPOINTS / f"{name}.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys() if "weight" in k}
    assert dtypes == {"F16"}


def test_shipped_models_fit_the_size_budget():
    total = sum((CHECKPOINTS / f"{name}.safetensors").stat().st_size for name in SHIPPED) / 2 ** 20
    assert total < SIZE_BUDGET_MB


PROMPTS = [("a red circle", "red", "circle"), ("a blue square", "blue", "square"),
           ("a yellow star", "yellow", "star"), ("an orange triangle", "orange", "triangle")]


def test_default_txt2img_model_draws_the_prompted_colour_and_shape(txt2img_model):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    images = generation.txt2img(txt2img_model, [p for p, _, _ in PROMPTS], seed=1234, steps=20, scale=5.0)
    for image, (prompt, colour, shape) in zip(images, PROMPTS):
        objects = detect_objects(image)
        assert objects, f"nothing detected for {prompt!r}"
        assert (objects[0].colour, objects[0].shape) == (colour, shape), prompt
