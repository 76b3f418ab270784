import argparse

import pytest
import torch

from ldm.inference.errors import UsageError
from ldm.inference.pipeline import encode_steps, guided_pair, plan_batches, read_prompts


def _opt(**kw):
    values = dict(prompt="a cat", from_file=None, repeat=1)
    values.update(kw)
    return argparse.Namespace(**values)


def test_single_prompt_fills_each_batch_and_seeds_count_across_iterations():
    batches = list(plan_batches(["a cat"], n_samples=3, n_iter=2, seed=10, fixed_code=False))
    assert [b.prompts for b in batches] == [["a cat"] * 3] * 2
    assert [b.seeds for b in batches] == [[10, 11, 12], [13, 14, 15]]


def test_fixed_code_reuses_the_seeds_of_the_first_batch():
    batches = list(plan_batches(["a cat"], n_samples=2, n_iter=3, seed=0, fixed_code=True))
    assert [b.seeds for b in batches] == [[0, 1]] * 3


def test_prompt_file_is_chunked_into_batches_and_passes_repeat():
    prompts = ["a", "b", "c"]
    batches = list(plan_batches(prompts, n_samples=2, n_iter=2, seed=0, fixed_code=False))
    assert [b.prompts for b in batches] == [["a", "b"], ["c"], ["a", "b"], ["c"]]
    assert [b.seeds for b in batches] == [[0, 1], [2], [3, 4], [5]]


def test_prompt_file_skips_blank_lines_and_repeats(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n  \na blue square\n")
    assert read_prompts(_opt(from_file=str(path), repeat=2)) == [
        "a red circle", "a red circle", "a blue square", "a blue square"]


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_prompt_file_is_an_error(tmp_path, content):
    path = tmp_path / "prompts.txt"
    path.write_text(content)
    with pytest.raises(UsageError, match="holds no prompts"):
        read_prompts(_opt(from_file=str(path)))


def test_missing_prompt_file_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="--from-file: file not found"):
        read_prompts(_opt(from_file=str(tmp_path / "nope.txt")))


@pytest.mark.parametrize("strength, steps, expected", [(0.8, 50, 40), (0.75, 50, 37), (0.0, 10, 0),
                                                       (1.0, 10, 9)])
def test_encode_steps_is_int_of_strength_times_steps_capped_at_the_last_step(strength, steps, expected):
    assert encode_steps(strength, steps) == expected


def test_unconditional_conditioning_keeps_the_image_and_swaps_the_text():
    c, uc, concat, level = torch.ones(1, 2), torch.zeros(1, 2), torch.full((1, 3), 5.), torch.tensor([7])
    cond, uncond = guided_pair(c, uc, c_concat=concat, c_adm=level)
    assert cond["c_crossattn"][0] is c and uncond["c_crossattn"][0] is uc
    assert uncond["c_concat"][0] is concat and uncond["c_adm"] is level


def test_no_guidance_means_no_unconditional_conditioning_and_plain_text_conditioning():
    c = torch.ones(1, 2)
    cond, uncond = guided_pair(c, None)
    assert cond is c and uncond is None
