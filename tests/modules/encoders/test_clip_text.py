"""FrozenCLIPEmbedder (SD 1.x text encoder) and its checkpoint layout (ldm/modules/encoders/clip_text.py).

Numerics use a tiny CLIPTextModel saved to a temporary directory, which also exercises loading
from a local directory; the full-size model is built on the meta device for its layout."""
import socket

import pytest
import torch

from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from tests.manifests import layout_of, read_manifest
from tests.modules.encoders.clip_reference import (EOT, LONG_PROMPT, PROMPTS, SOT, reference_content_ids,
                                                  save_tiny_clip_text_model)

POSITION_IDS = "transformer.text_model.embeddings.position_ids"


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip_text_model(tmp_path_factory.mktemp("tiny_clip_text"))


def test_default_version_builds_offline_with_the_v1_manifest_layout(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the encoder tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with torch.device("meta"):
        encoder = FrozenCLIPEmbedder()
    assert layout_of(encoder) == read_manifest("v1-inference", "cond_stage_model.")
    assert encoder.state_dict()[POSITION_IDS].dtype == torch.int64


def test_default_tokens_are_the_pinned_ids_padded_with_the_end_token():
    with torch.device("meta"):
        encoder = FrozenCLIPEmbedder()
    tokens, windows = encoder.tokenize("a red circle")
    assert windows == 1 and tokens.shape == (1, 77)
    assert tokens[0, :5].tolist() == [49406, 320, 736, 7117, 49407] and (tokens[0, 5:] == 49407).all()


def test_tokens_are_start_content_end_then_end_token_padding(tiny_clip_dir):
    encoder = FrozenCLIPEmbedder(version=tiny_clip_dir)
    with pytest.warns(UserWarning, match="tokens dropped"):
        tokens, _ = encoder.tokenize(PROMPTS)
    for row, prompt in zip(tokens.tolist(), PROMPTS):
        content = reference_content_ids(prompt)[:75]
        assert row == [SOT] + content + [EOT] * (77 - 1 - len(content))


def test_unknown_hub_name_raises_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown CLIP text model 'someone/clip'.*openai/clip-vit-large-patch14"):
        FrozenCLIPEmbedder(version="someone/clip")


def test_missing_local_directory_files_raise_a_clear_message(tmp_path):
    with pytest.raises(OSError, match="nothing is downloaded"):
        FrozenCLIPEmbedder(version=str(tmp_path))


def test_local_directory_without_tokenizer_files_raises_instead_of_an_empty_vocabulary(tiny_clip_dir, tmp_path):
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_clip_dir}/{name}", tmp_path / name)
    with pytest.raises(OSError, match="CLIP tokenizer .*vocab.json.* nothing is downloaded"):
        FrozenCLIPEmbedder(version=str(tmp_path))


def test_layers_last_pooled_hidden_have_documented_shapes_and_hidden_lacks_final_layernorm(tiny_clip_dir):
    last = FrozenCLIPEmbedder(version=tiny_clip_dir)
    pooled = FrozenCLIPEmbedder(version=tiny_clip_dir, layer="pooled")
    hidden = FrozenCLIPEmbedder(version=tiny_clip_dir, layer="hidden", layer_idx=-1)
    texts = ["a red circle", "two blue squares"]
    with torch.no_grad():
        z_last, z_pooled, z_hidden = last(texts), pooled(texts), hidden(texts)
        final_norm = last.transformer.text_model.final_layer_norm
        assert z_last.shape == z_hidden.shape == (2, 77, 32) and z_pooled.shape == (2, 1, 32)
        torch.testing.assert_close(final_norm(z_hidden), z_last)
        assert not torch.allclose(z_hidden, z_last, atol=1e-3)
        end_positions = [1 + len(reference_content_ids(t)) for t in texts]
        torch.testing.assert_close(z_pooled[:, 0], z_last[torch.arange(2), end_positions])


def test_hidden_layer_needs_a_layer_index_within_the_depth(tiny_clip_dir):
    with pytest.raises(ValueError, match="layer_idx"):
        FrozenCLIPEmbedder(version=tiny_clip_dir, layer="hidden")
    with pytest.raises(ValueError, match="layer_idx"):
        FrozenCLIPEmbedder(version=tiny_clip_dir, layer="hidden", layer_idx=3)


def _fresh_and_reference(tiny_clip_dir):
    reference = FrozenCLIPEmbedder(version=tiny_clip_dir)
    fresh = FrozenCLIPEmbedder(version=tiny_clip_dir)
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()
    return fresh, reference


@pytest.mark.parametrize("variant", ["original", "without_position_ids", "float_position_ids",
                                     "transformers5_keys"])
def test_checkpoints_of_every_transformers_layout_load_strictly(tiny_clip_dir, variant):
    fresh, reference = _fresh_and_reference(tiny_clip_dir)
    state = dict(reference.state_dict())
    assert list(state)[0] == POSITION_IDS
    if variant == "without_position_ids":
        del state[POSITION_IDS]
    elif variant == "float_position_ids":
        state[POSITION_IDS] = torch.arange(77, dtype=torch.float32)[None] - 1e-4
    elif variant == "transformers5_keys":
        state = {k.replace("text_model.", ""): v for k, v in state.items() if k != POSITION_IDS}
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.state_dict()[POSITION_IDS], torch.arange(77)[None])
    with torch.no_grad():
        torch.testing.assert_close(fresh("a red circle"), reference("a red circle"))


def test_frozen_encoder_stays_in_eval_without_gradients_and_unfrozen_one_trains(tiny_clip_dir):
    frozen = FrozenCLIPEmbedder(version=tiny_clip_dir)
    frozen.train()
    assert not frozen.transformer.training and not any(p.requires_grad for p in frozen.parameters())
    trainable = FrozenCLIPEmbedder(version=tiny_clip_dir, freeze=False)
    trainable.train()
    assert trainable.transformer.training and all(p.requires_grad for p in trainable.parameters())


def test_long_prompt_warns_once_naming_dropped_tokens_and_chunking_keeps_them(tiny_clip_dir):
    dropped = len(reference_content_ids(LONG_PROMPT)) - 75
    cut = FrozenCLIPEmbedder(version=tiny_clip_dir)
    with pytest.warns(UserWarning, match=f"{dropped} tokens dropped") as caught:
        z_cut = cut(LONG_PROMPT)
        cut(LONG_PROMPT)
    assert len(caught) == 1 and z_cut.shape == (1, 77, 32)
    chunked = FrozenCLIPEmbedder(version=tiny_clip_dir, chunk_long_prompts=True)
    with torch.no_grad():
        z = chunked([LONG_PROMPT, "a red circle"])
        assert z.shape == (2, 3 * 77, 32)
        torch.testing.assert_close(z[:1, :77], z_cut)
        torch.testing.assert_close(z[1:, :77], cut("a red circle"))
        torch.testing.assert_close(chunked("a red circle"), cut("a red circle"))


def test_batch_of_prompts_equals_prompts_encoded_one_by_one(tiny_clip_dir):
    encoder = FrozenCLIPEmbedder(version=tiny_clip_dir)
    texts = ["a red circle", "", "a much longer prompt about two green triangles"]
    with torch.no_grad():
        batch = encoder(texts)
        for i, text in enumerate(texts):
            torch.testing.assert_close(batch[i:i + 1], encoder(text), rtol=1e-5, atol=1e-6)


def test_device_follows_the_weights_unless_assigned(tiny_clip_dir):
    encoder = FrozenCLIPEmbedder(version=tiny_clip_dir)
    assert encoder.device == torch.device("cpu")
    encoder.device = "meta"
    assert encoder.device == torch.device("meta")
    encoder.device = None
    with torch.device("meta"):
        assert FrozenCLIPEmbedder().device == torch.device("meta")
