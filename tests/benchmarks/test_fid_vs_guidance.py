"""benchmarks/fid_vs_guidance.py without a model: the shapes reference reads as its prompts, a row
holds only what can run, and a missing Inception file is a reason, not a failure."""
from argparse import Namespace

from benchmarks.fid_vs_guidance import (
    inception_or_reason,
    print_rows,
    row_for_scale,
    shapes_prompt_set,
    shapes_reference,
)


def test_a_row_of_the_shapes_reference_itself_scores_full_adherence_and_leaves_fid_out(tmp_path, capsys):
    prompts = shapes_prompt_set(two_count=2, seed=0)
    images = shapes_reference(prompts, seed=0)
    inception, reason = inception_or_reason(str(tmp_path / "none.pth"), "cpu")
    assert inception is None and "none.pth not found" in reason and "--inception" in reason
    row = row_for_scale(images, prompts, Namespace(batch_size=8, device="cpu"), inception, None, None, shapes=True)
    assert row == {"shapes_colour": 1.0, "shapes_shape": 1.0, "shapes_position": 1.0, "shapes_all_correct": 1.0}
    print_rows([{"scale": 2.0, **row}])
    assert "| 2 | 100.0% | 100.0% | 100.0% | 100.0% |" in capsys.readouterr().out
