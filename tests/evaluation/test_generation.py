"""The evaluation makes its images through the one generation path (``ldm.load``'s pipelines):
no sampler call, noise draw or seeding of its own anywhere in ldm/evaluation."""
import ast
from pathlib import Path

import ldm.evaluation

EVALUATION = Path(ldm.evaluation.__file__).parent
OWN_SAMPLING = {"get_sampler", "sample", "randn", "randn_like", "manual_seed", "ImageNoise", "decode_first_stage"}


def _called_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            function = node.func
            yield function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def test_no_evaluation_module_samples_or_seeds_on_its_own():
    found = {(path.name, name) for path in EVALUATION.glob("*.py") for name in _called_names(path)
             if name in OWN_SAMPLING}
    # shipping.latent_scale_factor seeds the autoencoder's posterior samples of a statistic (no images)
    assert found <= {("shipping.py", "manual_seed"), ("shipping.py", "sample")}, found


def test_generation_calls_the_pipeline():
    source = (EVALUATION / "generation.py").read_text()
    assert "from ldm.inference.api import Pipeline" in source
