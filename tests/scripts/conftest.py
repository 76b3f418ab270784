"""Fixtures of the script tests."""
from typing import Dict

import pytest

from tests.scripts.helpers import TinyModel, build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Dict[str, TinyModel]:
    """Tiny random-weight models (txt2img, inpaint, depth, upscale), built once per test run."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))
