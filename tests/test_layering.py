"""The layers of the package: models, modules, data and util sit below inference, training and
evaluation, so nothing in them imports those (anywhere in a file, lazy imports included)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ldm"
LOWER_LAYERS = ["models", "modules", "data", "util"]
UPPER_LAYERS = ("ldm.inference", "ldm.training", "ldm.evaluation")


def imported_modules(tree: ast.AST):
    """Every module an ``import`` or ``from ... import`` statement names, with its line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            if node.module == "ldm":  # from ldm import inference
                for alias in node.names:
                    yield f"ldm.{alias.name}", node.lineno


def is_upper(module: str) -> bool:
    return any(module == upper or module.startswith(upper + ".") for upper in UPPER_LAYERS)


def lower_layer_files():
    for layer in LOWER_LAYERS:
        yield from sorted((PACKAGE / layer).rglob("*.py"))


def test_the_lower_layers_exist():
    assert all((PACKAGE / layer / "__init__.py").is_file() for layer in LOWER_LAYERS)


@pytest.mark.parametrize("path", list(lower_layer_files()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_import_nothing_from_inference_training_or_evaluation(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [f"line {line}: {module}" for module, line in imported_modules(tree) if is_upper(module)]
    assert not offending, f"ldm/{path.relative_to(PACKAGE)} imports an upper layer: {offending}"


def test_the_checker_sees_lazy_and_aliased_imports():
    source = ("def f():\n    from ldm.inference.images import make_grid\n"
              "import ldm.training as t\nfrom ldm import evaluation\n")
    assert sorted(m for m, _ in imported_modules(ast.parse(source)) if is_upper(m)) == [
        "ldm.evaluation", "ldm.inference.images", "ldm.training"]
