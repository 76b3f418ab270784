"""Textual-inversion embeddings in the SD text encoders (ldm/modules/encoders/textual_inversion.py):
the files of A1111, kohya-ss and diffusers; a prompt's token becomes the embedding's vectors in
the token embeddings, equal to diffusers' load_textual_inversion; without the token, or removed,
nothing changes."""
import pytest
import torch
from safetensors.torch import save_file

from ldm.modules.encoders import clip_text, openclip
from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder
from ldm.modules.encoders.shapes_text import ShapesTextEncoder
from ldm.modules.encoders.textual_inversion import (
    EmbeddingError,
    load_embedding,
    parse_embedding_spec,
    read_embedding_file,
    token_embedding_of,
)
from tests.modules.encoders.clip_reference import EOT, SOT, save_tiny_clip_text_model
from tests.modules.lora.lora_fixtures import TINY_OPENCLIP, perturb

WIDTH = 32  # of the tiny encoders' token vectors
PROMPT = "a <style> circle above a square"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip_text_model(tmp_path_factory.mktemp("tiny_clip"), hidden_size=WIDTH)


@pytest.fixture
def clip_encoder(clip_dir):
    return FrozenCLIPEmbedder(version=clip_dir)


@pytest.fixture
def openclip_encoder(monkeypatch):
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    monkeypatch.setitem(openclip.OPENCLIP_ARCHS, "tiny-ti", TINY_OPENCLIP)
    return perturb(FrozenOpenCLIPEmbedder(arch="tiny-ti", layer="penultimate"), std=0.05)


def _vectors(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, WIDTH, generator=torch.Generator().manual_seed(seed))


def _a1111_file(path, vectors):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "from-the-file",
                "step": 3000, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
    return str(path)


def _token_embeddings(encoder, prompt):
    """(token rows, the output of the encoder's token embedding) for ``prompt``."""
    seen = []
    hook = token_embedding_of(encoder).register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        rows, _ = encoder.tokenize(prompt)
        with torch.no_grad():
            encoder(prompt)
    finally:
        hook.remove()
    return rows[0], seen[0][0]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def test_a1111_kohya_and_diffusers_files_give_their_vectors_and_token(tmp_path):
    vectors = _vectors(3)
    save_file({"emb_params": vectors}, str(tmp_path / "kohya.safetensors"))
    save_file({"<cat-toy>": vectors[0]}, str(tmp_path / "learned_embeds.safetensors"))
    torch.save({"<cat-toy>": vectors[0]}, tmp_path / "learned_embeds.bin")
    cases = {_a1111_file(tmp_path / "a1111.pt", vectors): (vectors, None),
             str(tmp_path / "kohya.safetensors"): (vectors, None),
             str(tmp_path / "learned_embeds.safetensors"): (vectors[:1], "<cat-toy>"),
             str(tmp_path / "learned_embeds.bin"): (vectors[:1], "<cat-toy>")}
    for path, (expected, token) in cases.items():
        read = read_embedding_file(path)
        assert torch.equal(read.vectors, expected) and read.token == token, path


def test_files_that_are_no_embedding_are_one_line_errors(tmp_path):
    save_file({"clip_l": _vectors(2), "clip_g": torch.zeros(2, 1280)}, str(tmp_path / "sdxl.safetensors"))
    save_file({"a": _vectors(1), "b": _vectors(1)}, str(tmp_path / "two.safetensors"))
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(_vectors(1))})},
               tmp_path / "module.pt")
    expected = {"sdxl.safetensors": "is an SDXL embedding", "two.safetensors": "holds 2 tensors (a, b)",
                "module.pt": "not plain tensors", "missing.pt": "embedding file not found"}
    for name, words in expected.items():
        with pytest.raises(EmbeddingError) as info:
            read_embedding_file(str(tmp_path / name))
        assert words in str(info.value) and "\n" not in str(info.value)


def test_embedding_specs_take_a_token_after_the_last_colon():
    assert parse_embedding_spec("style.pt") == ("style.pt", None)
    assert parse_embedding_spec("style.pt:<my-style>") == ("style.pt", "<my-style>")
    assert parse_embedding_spec(r"C:\emb\style.pt") == (r"C:\emb\style.pt", None)
    assert parse_embedding_spec(r"C:\emb\style.pt:tok") == (r"C:\emb\style.pt", "tok")
    for bad in ("style.pt:", ":tok"):
        with pytest.raises(EmbeddingError, match="--embedding"):
            parse_embedding_spec(bad)


# ---------------------------------------------------------------------------------------------
# In the encoders
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["clip", "openclip"])
def test_the_token_becomes_the_embedding_vectors_and_other_prompts_are_unchanged(which, clip_encoder,
                                                                                 openclip_encoder, tmp_path):
    encoder = clip_encoder if which == "clip" else openclip_encoder
    plain = "a red circle above a square"
    before = encoder(plain)
    vectors = _vectors(3)
    handle = load_embedding(encoder, _a1111_file(tmp_path / "style.pt", vectors), token="<style>", verbose=False)
    rows, embedded = _token_embeddings(encoder, PROMPT)
    a_ids, rest_ids = (encoder._content_ids([text])[0] for text in ("a", "circle above a square"))
    expected_rows = [SOT, *a_ids, *handle.ids, *rest_ids, EOT]
    assert rows[:len(expected_rows)].tolist() == expected_rows and len(handle.ids) == 3
    start = 1 + len(a_ids)
    torch.testing.assert_close(embedded[start:start + 3], vectors, rtol=0, atol=0)
    torch.testing.assert_close(embedded[1], token_embedding_of(encoder).weight[a_ids[0]], rtol=0, atol=0)
    assert torch.equal(encoder(plain), before)
    assert not torch.equal(encoder(PROMPT), encoder("a style circle above a square"))


def test_the_token_is_a_whole_word_of_any_case(clip_encoder, tmp_path):
    handle = load_embedding(clip_encoder, _a1111_file(tmp_path / "mignon.pt", _vectors(1)), verbose=False)
    assert handle.token == "mignon"
    rows, _ = clip_encoder.tokenize(["MIGNON, red", "mignons red", "a mignon"])
    assert rows[0, 1].item() == handle.ids[0] and rows[2, 2].item() == handle.ids[0]
    assert (rows[1] >= 0).all()
    assert handle.used_in("a Mignon circle") and not handle.used_in("mignons")


@pytest.mark.parametrize("text_model", ["transformers", "ours"])
def test_equal_to_diffusers_load_textual_inversion(text_model, clip_encoder, clip_dir, tmp_path, monkeypatch):
    """diffusers adds the tokens to the tokenizer and rows to the text encoder's embedding matrix,
    and spells a multi-vector token out as ``tok tok_1 tok_2``: the same encoder states, with
    transformers' CLIPTextModel in our encoder or our own text model (a known name's)."""
    if text_model == "ours":
        monkeypatch.setitem(clip_text.KNOWN_TEXT_CONFIGS, "tiny/clip-ti", dict(
            hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=4,
            projection_dim=WIDTH))
        weights, clip_encoder = clip_encoder.state_dict(), FrozenCLIPEmbedder(version="tiny/clip-ti")
        clip_encoder.load_state_dict(weights, strict=True)
        assert clip_encoder._tokenizer is None  # prompts tokenized without transformers
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin
    from transformers import CLIPTextModel, CLIPTokenizer

    class Loader(TextualInversionLoaderMixin):
        hf_device_map, components = None, {}

    vectors = _vectors(3, seed=4)
    path = str(tmp_path / "learned_embeds.safetensors")
    save_file({"<style>": vectors}, path)
    loader = Loader()
    loader.tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    loader.text_encoder = CLIPTextModel.from_pretrained(clip_dir)
    loader.load_textual_inversion(path)
    prompts = [PROMPT, "<style>, <style>", "a red circle"]
    ids = loader.tokenizer(loader.maybe_convert_prompt(prompts, loader.tokenizer), padding="max_length",
                           max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        theirs = loader.text_encoder(ids).last_hidden_state
    handle = load_embedding(clip_encoder, path, verbose=False)
    assert handle.token == "<style>"
    with torch.no_grad():
        torch.testing.assert_close(clip_encoder(prompts), theirs, rtol=1e-5, atol=1e-5)


def test_removing_gives_the_encoder_back_as_it_was(clip_encoder, tmp_path):
    before = clip_encoder(PROMPT)
    embedding = token_embedding_of(clip_encoder)
    first = load_embedding(clip_encoder, _a1111_file(tmp_path / "style.pt", _vectors(2)), "<style>", verbose=False)
    second = load_embedding(clip_encoder, _a1111_file(tmp_path / "other.pt", _vectors(1, 1)), verbose=False)
    with_both = clip_encoder(PROMPT)
    second.remove()
    assert torch.equal(clip_encoder(PROMPT), with_both) and clip_encoder.added_tokens is not None
    with first:
        pass
    assert not first.applied and clip_encoder.added_tokens is None
    assert not embedding._forward_hooks and not embedding._forward_pre_hooks
    assert torch.equal(clip_encoder(PROMPT), before)
    first.remove()  # again: nothing happens


def test_long_prompts_count_the_vectors_and_chunk_with_them(clip_dir, tmp_path):
    encoder = FrozenCLIPEmbedder(version=clip_dir, chunk_long_prompts=True)
    handle = load_embedding(encoder, _a1111_file(tmp_path / "wide.pt", _vectors(70)), verbose=False)
    rows, windows = encoder.tokenize("wide " + " ".join(["red"] * 10))
    assert windows == 2 and rows[0, 1:71].tolist() == handle.ids and (rows[1, 1:6] == rows[0, 71]).all()
    assert encoder("wide red").shape == (1, 77, WIDTH)


def test_embeddings_that_do_not_fit_are_refused_in_one_line(clip_encoder, tmp_path):
    save_file({"emb_params": torch.zeros(1, 768)}, str(tmp_path / "sd1.safetensors"))
    save_file({"emb_params": torch.zeros(80, WIDTH)}, str(tmp_path / "long.safetensors"))
    load_embedding(clip_encoder, _a1111_file(tmp_path / "style.pt", _vectors(1)), verbose=False)
    cases = {"sd1.safetensors": "its vectors have 768 numbers, the encoder's tokens 32; it is made for SD 1.x",
             "long.safetensors": "has 80 vectors, more than the 75 tokens a prompt holds",
             "style.pt": "the token 'style' is taken by another embedding; give another as FILE:TOKEN"}
    for name, words in cases.items():
        with pytest.raises(EmbeddingError, match=words):
            load_embedding(clip_encoder, str(tmp_path / name), verbose=False)


def test_an_encoder_that_is_not_clip_is_named_in_the_refusal(tmp_path):
    model = torch.nn.Module()
    model.cond_stage_model = ShapesTextEncoder(["red", "circle"], width=WIDTH, layers=1, heads=2)
    with pytest.raises(EmbeddingError, match="this model's text encoder is ShapesTextEncoder"):
        load_embedding(model, _a1111_file(tmp_path / "style.pt", _vectors(1)))


def test_loading_says_which_token_stands_for_how_many_vectors(clip_encoder, tmp_path, capsys):
    path = _a1111_file(tmp_path / "style.pt", _vectors(2))
    load_embedding(clip_encoder, path)
    assert capsys.readouterr().out.strip() == f"embedding {path}: token 'style' (2 vectors of {WIDTH})"
