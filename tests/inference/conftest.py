"""Fixtures shared by the inference tests: the tiny SD-shaped text-to-image model and its pipeline."""
import pytest

import ldm


@pytest.fixture(scope="module")
def tiny_txt2img(tiny_models):
    """The tiny random-weight text-to-image model (CLIP text encoder) as config + checkpoint."""
    return tiny_models["txt2img"]


@pytest.fixture(scope="module")
def tiny_txt2img_pipe(tiny_txt2img):
    """``ldm.load("txt2img")`` of the tiny model on the CPU, as loaded with no other option."""
    return ldm.load("txt2img", ckpt=str(tiny_txt2img.ckpt), config=str(tiny_txt2img.config), device="cpu")
