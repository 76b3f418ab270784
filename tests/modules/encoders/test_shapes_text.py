"""ShapesTextEncoder: CLIP token rows, the closed vocabulary, output shapes, training."""
import warnings

import pytest
import torch

from ldm.data.shapes import VOCABULARY
from ldm.modules.encoders.shapes_text import (
    END_SLOT,
    START_SLOT,
    UNKNOWN_SLOT,
    ShapesTextEncoder,
    UnknownWordsWarning,
)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ShapesTextEncoder(VOCABULARY, width=32, layers=1, heads=2, max_length=12)


def test_rows_are_clip_tokens_padded_with_the_end_token(encoder):
    rows = encoder.tokenize(["a red circle", ""])
    assert rows[0, :5].tolist() == [49406, 320, 736, 7117, 49407]
    assert rows[0, 5:].eq(49407).all() and rows.shape == (2, 12)
    assert rows[1, 0] == 49406 and rows[1, 1:].eq(49407).all()


def test_vocabulary_tokens_get_their_own_slots_and_other_words_share_unknown(encoder):
    slots = encoder.slot_of_token[encoder.tokenize(["a red cat"])[0]]
    assert slots[0] == START_SLOT and slots[4] == END_SLOT
    assert slots[1] > END_SLOT and slots[2] > END_SLOT and slots[3] == UNKNOWN_SLOT
    assert encoder.known_fraction(["a red circle", "a red cat"]) == (1.0, pytest.approx(2 / 3))
    assert encoder.token_embedding.num_embeddings == 3 + len(set(VOCABULARY))


def test_output_is_batch_by_tokens_by_width_and_depends_on_the_words(encoder):
    z = encoder.encode(["a red circle above a blue square", "a blue circle above a red square"])
    assert z.shape == (2, 12, 32)
    assert not torch.allclose(z[0], z[1])
    assert torch.allclose(encoder(["a red circle"]), encoder("a red circle"))


def test_long_prompts_are_cut_with_a_warning(encoder):
    with pytest.warns(UserWarning, match="tokens dropped"):
        rows = encoder.tokenize(["a red circle " * 6])
    assert rows.shape == (1, 12) and rows[0, -1] == 49407


def test_the_encoder_trains_and_its_state_dict_has_no_lookup_table():
    enc = ShapesTextEncoder(["red", "blue"], width=32, layers=1, heads=2, max_length=8)
    assert "slot_of_token" not in enc.state_dict()
    loss = enc(["red", "blue"]).pow(2).mean()
    loss.backward()
    assert enc.token_embedding.weight.grad is not None and enc.token_embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [(dict(words=[]), "non-empty"),
                                             (dict(words=["a"], width=30, heads=4), "divisible"),
                                             (dict(words=["a"], max_length=2), "at least 3"),
                                             (dict(words=["a"], causal="yes"), "true or false")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesTextEncoder(**kwargs)


def test_a_causal_encoder_lets_each_token_see_only_the_tokens_before_it():
    torch.manual_seed(0)
    enc = ShapesTextEncoder(VOCABULARY, width=32, layers=2, heads=2, max_length=12, causal=True)
    above, below = enc(["a red circle above a blue square", "a red circle below a blue square"])
    # tokens 1-3 ("a red circle") precede the relation word: unchanged; every later token changes
    assert torch.allclose(above[:4], below[:4], atol=1e-6)
    assert (above[4:] - below[4:]).abs().amax(dim=-1).gt(1e-4).all()


def test_without_the_causal_mask_every_token_sees_the_whole_prompt():
    torch.manual_seed(0)
    enc = ShapesTextEncoder(VOCABULARY, width=32, layers=2, heads=2, max_length=12)
    above, below = enc(["a red circle above a blue square", "a red circle below a blue square"])
    assert (above - below).abs().amax(dim=-1).gt(1e-4).all()


def test_words_outside_the_vocabulary_get_one_warning_naming_them():
    encoder = ShapesTextEncoder(VOCABULARY, width=32, layers=1, heads=2, max_length=20)
    prompt = "an astronaut riding a red circle, astronaut"
    with pytest.warns(UnknownWordsWarning) as caught:
        encoder.tokenize([prompt, prompt])
    assert len(caught) == 1
    assert "does not know 'astronaut', 'riding': ignored" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenize([prompt, "a red circle above a blue square", ""])  # seen before, or all known


def test_unknown_words_are_reported_for_a_few_prompts_then_summed_up_once():
    encoder = ShapesTextEncoder(VOCABULARY, width=32, layers=1, heads=2, max_length=20)
    with pytest.warns(UnknownWordsWarning) as caught:
        encoder.tokenize([f"a photo number {i}" for i in range(10)])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4 and messages[-1].startswith("more prompts with words")
