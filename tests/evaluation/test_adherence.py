"""Prompt-adherence scoring: prompt sets, the scoring rules, tables and PSNR."""
import numpy as np
import pytest

from ldm.data.shapes import HELD_OUT_COMBINATIONS, caption_of, render_scene, scene_for
from ldm.evaluation.adherence import (
    PromptCase,
    Score,
    format_table,
    mirrored,
    parse_prompt,
    psnr,
    same_layout,
    score_detections,
    score_image,
    single_object_cases,
    summarize,
    two_object_cases,
)
from ldm.evaluation.detector import DetectedObject


def _obj(colour, shape, cx=32.0, cy=32.0, area=100):
    return DetectedObject(colour, shape, cx, cy, area, 0.0, 0.0)


def test_prompt_sets_cover_every_pair_and_split_seen_from_held_out():
    singles = single_object_cases()
    assert len(singles) == 24 and sum(c.held_out for c in singles) == len(HELD_OUT_COMBINATIONS)
    held = two_object_cases(20, held_out=True)
    seen = two_object_cases(20, held_out=False)
    assert all(c.held_out for c in held) and not any(c.held_out for c in seen)
    assert all(c.objects[0][0] != c.objects[1][0] for c in held + seen)
    assert two_object_cases(20, held_out=True) == held  # seeded


def test_prompt_text_matches_the_dataset_captions():
    case = PromptCase((("orange", "star"), ("blue", "square")), "below")
    assert case.text == "an orange star below a blue square"
    assert case.text == caption_of(scene_for(case.objects, case.relation))


def test_single_object_scoring_uses_the_largest_object():
    case = PromptCase((("red", "circle"),))
    assert score_detections(case, [_obj("red", "circle"), _obj("blue", "star", area=5)]) == Score(1.0, 1.0, None)
    assert score_detections(case, [_obj("red", "square")]) == Score(1.0, 0.0, None)
    assert score_detections(case, [_obj("blue", "circle")]) == Score(0.0, 0.0, None)
    assert score_detections(case, []) == Score(0.0, 0.0, None)


def test_two_object_scoring_checks_each_colour_shape_and_the_relation():
    case = PromptCase((("red", "circle"), ("blue", "square")), "above")
    right = [_obj("red", "circle", cy=10), _obj("blue", "square", cy=50)]
    assert score_detections(case, right) == Score(1.0, 1.0, 1.0)
    swapped = [_obj("red", "circle", cy=50), _obj("blue", "triangle", cy=10)]
    assert score_detections(case, swapped) == Score(1.0, 0.5, 0.0)
    assert score_detections(case, [_obj("red", "circle")]) == Score(0.5, 0.5, 0.0)


def test_the_mirror_of_a_prompt_swaps_the_relation_word_only():
    case = PromptCase((("red", "circle"), ("blue", "square")), "to the left of")
    assert mirrored(case) == PromptCase(case.objects, "to the right of")
    assert mirrored(mirrored(case)) == case
    assert mirrored(PromptCase(case.objects, "below")).relation == "above"
    with pytest.raises(ValueError, match="two-object"):
        mirrored(PromptCase((("red", "circle"),)))


def test_same_layout_compares_the_side_of_the_first_named_object_along_the_relation_axis():
    case = PromptCase((("red", "circle"), ("blue", "square")), "above")
    red_on_top = [_obj("red", "circle", cx=50, cy=10), _obj("blue", "square", cx=10, cy=50)]
    red_below = [_obj("red", "circle", cx=50, cy=50), _obj("blue", "square", cx=10, cy=10)]
    assert same_layout(case, red_on_top, red_on_top) is True
    assert same_layout(case, red_on_top, red_below) is False
    assert same_layout(case, red_on_top, red_on_top[:1]) is None
    # left/right relations compare x: red left of blue in both images, whatever y does
    sideways = PromptCase(case.objects, "to the left of")
    assert same_layout(sideways, red_on_top, red_below) is True


def test_renders_of_the_prompts_score_perfectly():
    cases = single_object_cases()[:6] + two_object_cases(6, held_out=True)
    scores = [score_image(c, render_scene(scene_for(c.objects, c.relation, seed=i)).image)
              for i, c in enumerate(cases)]
    assert all(s.all_correct for s in scores)


def test_summary_groups_by_kind_and_held_out_and_formats_percentages():
    cases = [PromptCase((("red", "circle"),)), PromptCase((("red", "triangle"),)),
             PromptCase((("red", "circle"), ("blue", "square")), "above")]
    scores = [Score(1.0, 0.0, None), Score(1.0, 1.0, None), Score(0.5, 0.5, 0.0)]
    rows = summarize(cases, scores)
    assert [(r.group, r.count) for r in rows] == [("single-object, seen", 1), ("single-object, held-out", 1),
                                                  ("two-object, seen", 1)]
    assert rows[0].shape == 0.0 and rows[1].all_correct == 1.0 and rows[2].position == 0.0
    table = format_table(rows)
    assert "| single-object, held-out | 1 | 100.0% | 100.0% | - | 100.0% |" in table


def test_psnr_of_known_errors_and_masks():
    a = np.zeros((4, 4, 3))
    b = np.full((4, 4, 3), 0.1)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    c = b.copy()
    c[0, 0] = 0.0
    assert psnr(a, c, mask=mask) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((2, 2, 3)))


@pytest.mark.parametrize("text, case", [
    ("a red circle", PromptCase((("red", "circle"),))),
    ("A small  Orange star", PromptCase((("orange", "star"),))),
    ("a red circle to the left of a blue square", PromptCase((("red", "circle"), ("blue", "square")),
                                                             "to the left of")),
    ("a green triangle below an orange star", PromptCase((("green", "triangle"), ("orange", "star")), "below")),
    ("a photo of a cat", None),
    ("a red circle beside a blue square", None),
    ("a pink circle", None),
])
def test_parse_prompt_reads_shapes_captions_and_nothing_else(text, case):
    assert parse_prompt(text) == case


def test_parse_prompt_reads_every_caption_of_the_prompt_sets():
    for case in single_object_cases() + two_object_cases(8, held_out=False) + two_object_cases(8, held_out=True):
        assert parse_prompt(case.text) == case
