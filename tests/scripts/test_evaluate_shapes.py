"""scripts/evaluate_shapes.py: bad options are one line on stderr and exit 2, before any model loads."""
import pytest

from tests.scripts.helpers import load_script


@pytest.mark.parametrize("argv, pattern", [
    (["txt2img", "--token-merging", "1.0"], "--token-merging: token merging ratio must be a number in [0, 1), got 1.0"),
    (["txt2img", "--token-merging", "-0.1"], "--token-merging: token merging ratio must be a number in [0, 1)"),
    (["txt2img", "--cache-depth", "-1"], "--cache-depth must be 0 or more"),
    (["pixel", "--count", "0"], "--count must be at least 1"),
])
def test_bad_options_are_one_line_and_exit_2(argv, pattern, capsys):
    assert load_script("evaluate_shapes.py").main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate_shapes.py: error: ") and pattern in lines[0], lines
