"""scripts/evaluate.py end to end on a random-weight Inception: the metrics table and JSON, saved
statistics as an input, shapes scores, and one-line errors (a missing weights file names it)."""
import json

import numpy as np
import pytest
from PIL import Image

from ldm.data.shapes import render_scene, scene_for
from ldm.evaluation.inception import WEIGHTS_FILE
from tests.evaluation.inception_weights import save_random_fid_inception
from tests.scripts.helpers import main_exit_code


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of 2 generated images, an .npz of 3 reference images, their prompts, the random Inception."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    (root / "generated").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "generated" / f"{i:05}.png")
    np.savez(root / "reference.npz", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    (root / "prompts.txt").write_text("a red circle\na blue square\n")
    return root, save_random_fid_inception(root / WEIGHTS_FILE)


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_metrics_table_json_and_saved_statistics_give_the_same_fid(inputs, tmp_path, capsys):
    root, weights = inputs
    common = ["--inception", str(weights), "--batch-size", "2"]
    code = main_exit_code("evaluate.py", [str(root / "generated"), str(root / "reference.npz"), *common,
                                          "--k", "1", "--splits", "2", "--json", str(tmp_path / "all.json"),
                                          "--save-stats", str(tmp_path / "reference_stats.npz")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| FID |" in out and "| recall |" in out and "| Inception Score (mean) |" in out
    metrics = json.loads((tmp_path / "all.json").read_text())["metrics"]
    assert set(metrics) == {"fid", "kid_mean", "kid_std", "kid_subset_size", "is_mean", "is_std", "precision",
                            "recall", "pr_k"}
    assert metrics["fid"] > 0 and metrics["kid_subset_size"] == 2 and metrics["is_mean"] >= 1.0
    code = main_exit_code("evaluate.py", [str(root / "generated"), str(tmp_path / "reference_stats.npz"), *common,
                                          "--splits", "2", "--json", str(tmp_path / "fid.json")])
    again = json.loads((tmp_path / "fid.json").read_text())["metrics"]
    assert code == 0 and list(again) == ["fid", "is_mean", "is_std"]
    assert again["fid"] == pytest.approx(metrics["fid"], rel=1e-6)


def test_a_missing_inception_file_is_one_line_naming_it(inputs, tmp_path, capsys):
    root, _ = inputs
    missing = tmp_path / WEIGHTS_FILE
    code = main_exit_code("evaluate.py", [str(root / "generated"), str(root / "reference.npz"),
                                          "--inception", str(missing)])
    line = _error_line(capsys)
    assert code == 2 and line.startswith("evaluate.py: error: ") and str(missing) in line and "pytorch-fid" in line


def test_shapes_scores_need_no_inception(tmp_path, capsys):
    prompts = ["a red circle", "a blue star to the left of a yellow triangle"]
    objects = [([("red", "circle")], None), ([("blue", "star"), ("yellow", "triangle")], "to the left of")]
    np.savez(tmp_path / "samples.npz", np.stack([
        (render_scene(scene_for(o, r, seed=i)).image * 255).round().astype(np.uint8)
        for i, (o, r) in enumerate(objects)]))
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    code = main_exit_code("evaluate.py", [str(tmp_path / "samples.npz"), "--metrics", "shapes", "--prompts",
                                          str(tmp_path / "prompts.txt"), "--inception", str(tmp_path / "none.pth")])
    out = capsys.readouterr().out
    assert code == 0 and "| shapes: all correct | 100.0% |" in out


@pytest.mark.parametrize("extra, pattern", [
    (["reference.npz", "--metrics", "fid,lpips"], "unknown metric 'lpips'"),
    (["missing_folder"], "missing_folder does not exist"),
    (["--metrics", "fid"], "compares two sets"),
    (["--metrics", "clip"], "needs --clip"),
    (["--metrics", "clip", "--clip", "generated", "--prompts", "prompts.txt"],
     "--clip generated: not a transformers CLIP model directory"),
    (["--metrics", "clip", "--clip", "no_clip", "--prompts", "prompts.txt"], "--clip no_clip: no such directory"),
    (["--json", "reference.npz"], "exists; choose a new file name"),
    (["reference.npz", "--batch-size", "0"], "--batch_size must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(inputs, extra, pattern, capsys, monkeypatch):
    root, _ = inputs
    monkeypatch.chdir(root)
    before = sorted(p.name for p in root.iterdir())
    code = main_exit_code("evaluate.py", ["generated", *extra])
    line = _error_line(capsys)
    assert code == 2 and pattern in line and sorted(p.name for p in root.iterdir()) == before
