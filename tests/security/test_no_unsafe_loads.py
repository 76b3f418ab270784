"""No code of the project, its scripts or its tests calls ``torch.load`` without
``weights_only=True``, or unpickles with ``pickle``: the one safe loader is ldm.util.load_checkpoint."""
import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("ldm", "scripts", "tests", "benchmarks") for p in (REPO_ROOT / folder).rglob("*.py"))
SOURCES.append(REPO_ROOT / "main.py")


def _unsafe_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        owner, name = node.func.value.id, node.func.attr
        if owner == "torch" and name == "load":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                yield node.lineno, "torch.load without weights_only=True"
        elif owner in ("pickle", "cPickle", "dill") and name in ("load", "loads", "Unpickler"):
            yield node.lineno, f"{owner}.{name}"


def test_nothing_unpickles_unsafely():
    found = [f"{path.relative_to(REPO_ROOT)}:{line}: {what}" for path in SOURCES
             for line, what in _unsafe_calls(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))]
    assert found == []


def test_the_check_sees_an_unsafe_load():
    tree = ast.parse("import torch\nsd = torch.load(path, map_location='cpu')\nok = torch.load(p, weights_only=True)\n")
    assert list(_unsafe_calls(tree)) == [(2, "torch.load without weights_only=True")]
