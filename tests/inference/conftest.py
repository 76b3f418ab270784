"""Fixtures shared by the inference tests: the tiny SD-shaped text-to-image model and its pipeline."""
import pytest


@pytest.fixture(scope="module")
def tiny(tiny_models):
    """The tiny random-weight text-to-image model (CLIP text encoder) as config + checkpoint."""
    return tiny_models["txt2img"]


@pytest.fixture(scope="module")
def tiny_pipe(tiny):
    """``ldm.load("txt2img")`` of the tiny model on the CPU, as loaded with no other option."""
    return tiny.load()
