"""Tokenization of ldm/modules/encoders/tokenizer.py against references built independently here:
a CLIPTokenizer loaded the way the original loads it (vocab.json + merges.txt files), and a
plain-Python byte-pair encoder following open_clip's rules."""
import copy
import json
import warnings

import pytest
import torch

from ldm.modules.encoders.tokenizer import (ClipTokenIds, LongPromptWarning, OpenCLIPTokenizer, TruncationNotice,
                                            build_clip_tokenizer, clip_vocabulary, pack_rows, split_into_windows)

from tests.modules.encoders.clip_reference import (ENCODER, EOT, LONG_PROMPT, PROMPTS, RANKS, SOT,
                                                  reference_content_ids, reference_open_clip_tokenize)


@pytest.fixture(scope="module")
def original_style_tokenizer(tmp_path_factory):
    """CLIPTokenizer from vocab.json/merges.txt files, as the hub repository holds them."""
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip_tokenizer_files")
    (folder / "vocab.json").write_text(json.dumps(ENCODER, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in RANKS) + "\n",
                                       encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def test_vocabulary_has_49408_entries_with_start_and_end_tokens_last():
    vocab, merges = clip_vocabulary()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab == ENCODER


def test_a_red_circle_has_the_pinned_sd1_ids_padded_with_end_token():
    ids = build_clip_tokenizer()("a red circle", truncation=True, max_length=77, padding="max_length",
                                 return_tensors="pt")["input_ids"][0]
    assert ids[:5].tolist() == [49406, 320, 736, 7117, 49407]
    assert ids.shape == (77,) and (ids[5:] == 49407).all()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_hf_tokenizer_from_shipped_vocab_equals_one_loaded_from_files(prompt, original_style_tokenizer):
    ours = build_clip_tokenizer()
    kwargs = dict(truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    assert torch.equal(ours(prompt, **kwargs)["input_ids"], original_style_tokenizer(prompt, **kwargs)["input_ids"])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_hf_content_ids_equal_plain_python_bpe(prompt):
    ours = build_clip_tokenizer()(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    assert ours == reference_content_ids(prompt)


def test_clip_token_ids_without_transformers_equal_the_hf_tokenizer_and_plain_python_bpe():
    prompts = [*PROMPTS, "<|startoftext|>typed special tokens<|endoftext|>", "a red circle above a blue square"]
    ours = ClipTokenIds().content_ids(prompts)
    assert ours == build_clip_tokenizer()(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    assert ours[:len(PROMPTS)] == [reference_content_ids(p) for p in PROMPTS]
    assert ours[0] == [320, 736, 7117] and (ClipTokenIds.bos_token_id, ClipTokenIds.eos_token_id) == (SOT, EOT)


def test_open_clip_rules_equal_plain_python_reference_for_a_batch():
    texts = PROMPTS + ["Tom &amp; Jerry &lt;3", "UPPER case", "<|endoftext|> typed as text"]
    assert torch.equal(OpenCLIPTokenizer()(texts), reference_open_clip_tokenize(texts))


def test_open_clip_rows_are_zero_padded_and_keep_end_token_when_truncated():
    rows = OpenCLIPTokenizer()(["a red circle", LONG_PROMPT, ""])
    assert rows[0, :5].tolist() == [SOT, 320, 736, 7117, EOT] and (rows[0, 5:] == 0).all()
    assert rows[1, 0] == SOT and rows[1, -1] == EOT and (rows[1] != 0).all()
    assert rows[2, :2].tolist() == [SOT, EOT] and (rows[2, 2:] == 0).all()


def test_open_clip_cleaning_unescapes_html_and_lowercases():
    tok = OpenCLIPTokenizer()
    assert torch.equal(tok("Tom &amp;amp; JERRY"), tok("tom & jerry"))


def test_pack_rows_truncates_to_length_minus_two_content_tokens():
    rows = pack_rows([list(range(1, 11)), [5]], length=6, start_id=100, end_id=101, pad_id=0)
    assert rows.tolist() == [[100, 1, 2, 3, 4, 101], [100, 5, 101, 0, 0, 0]]


def test_split_into_windows_gives_every_prompt_the_same_number_of_windows():
    windows = split_into_windows([list(range(7)), [], [1]], window=3)
    assert windows == [[[0, 1, 2], [3, 4, 5], [6]], [[], [], []], [[1], [], []]]


def test_truncation_notice_warns_once_per_prompt_with_dropped_count():
    notice = TruncationNotice(content_limit=75)
    content = [reference_content_ids(LONG_PROMPT), reference_content_ids("short")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notice.check([LONG_PROMPT, "short"], content)
        notice.check([LONG_PROMPT, "short"], content)
    assert len(caught) == 1 and issubclass(caught[0].category, LongPromptWarning)
    assert f"{len(content[0]) - 75} tokens dropped" in str(caught[0].message)


def test_copies_of_the_open_clip_tokenizer_still_read_typed_end_tokens_as_text():
    # deepcopy goes through __reduce__, as pickling does (the project never unpickles: tests/security)
    tokenizer = OpenCLIPTokenizer()
    texts = ["a <|endoftext|> circle", "a red circle"]
    assert torch.equal(copy.deepcopy(tokenizer)(texts), tokenizer(texts))
    assert torch.equal(tokenizer(texts), reference_open_clip_tokenize(texts))
