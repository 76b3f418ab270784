"""Our CLIP text model (ldm/modules/encoders/clip_text_tower.py) is transformers' CLIPTextModel in keys,
module names and outputs, and building the SD 1.x encoder with it does not import transformers' modeling code."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from ldm.modules.encoders import clip_text
from ldm.modules.encoders.clip_text import with_original_layout
from ldm.modules.encoders.clip_text_tower import ClipTextConfig, ClipTextModel
from ldm.modules.encoders.modules import FrozenCLIPEmbedder
from tests.modules.encoders.clip_reference import PROMPTS, save_tiny_clip_text_model

TINY = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32)


def _transformers_twin(config: ClipTextConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    theirs = with_original_layout(CLIPTextModel(CLIPTextConfig(**dataclasses.asdict(config)))).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))  # LayerNorms away from 1 and 0, as trained ones are
    return theirs


@pytest.mark.parametrize("activation, eos", [("quick_gelu", 2), ("gelu", 49407)])
def test_outputs_equal_transformers_clip_text_model_on_the_same_weights(activation, eos):
    config = ClipTextConfig(**TINY, hidden_act=activation, eos_token_id=eos)
    theirs = _transformers_twin(config)
    ours = with_original_layout(ClipTextModel(config)).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    tokens = torch.randint(0, 49406, (3, 77))
    tokens[:, 0], tokens[0, 5:], tokens[1, 20:], tokens[2, -1] = 49406, 49407, 49407, 49407
    with torch.no_grad():
        mine, reference = ours(input_ids=tokens, output_hidden_states=True), theirs(input_ids=tokens,
                                                                                    output_hidden_states=True)
    torch.testing.assert_close(mine.last_hidden_state, reference.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.pooler_output, reference.pooler_output, rtol=1e-5, atol=1e-5)
    assert len(mine.hidden_states) == len(reference.hidden_states) == 3
    for a, b in zip(mine.hidden_states, reference.hidden_states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert mine.pooler_output.shape == (3, 32) and mine.hidden_states is not None
    assert ours(input_ids=tokens).hidden_states is None


def test_linear_layers_have_transformers_names_for_lora_and_embeddings():
    ours = with_original_layout(ClipTextModel(ClipTextConfig(**TINY)))
    theirs = _transformers_twin(ClipTextConfig(**TINY))
    linear = {n for n, m in ours.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear == {n for n, m in theirs.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "text_model.encoder.layers.1.self_attn.q_proj" in linear


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unsupported CLIP activation 'relu'"):
        ClipTextModel(ClipTextConfig(**TINY, hidden_act="relu"))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip_text_model(tmp_path_factory.mktemp("tiny_clip_text_tower"))


@pytest.mark.parametrize("layer, layer_idx", [("last", None), ("pooled", None), ("hidden", -2)])
def test_encoder_of_a_known_name_encodes_like_the_transformers_one_with_its_weights(tiny_clip_dir, monkeypatch,
                                                                                    layer, layer_idx):
    monkeypatch.setitem(clip_text.KNOWN_TEXT_CONFIGS, "tiny/clip", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32))
    reference = FrozenCLIPEmbedder(version=tiny_clip_dir, layer=layer, layer_idx=layer_idx)
    ours = FrozenCLIPEmbedder(version="tiny/clip", layer=layer, layer_idx=layer_idx)
    assert isinstance(ours.transformer, ClipTextModel)
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(PROMPTS[:4]), reference(PROMPTS[:4]), rtol=1e-5, atol=1e-5)


def test_known_name_loads_checkpoints_without_position_ids_or_text_model_level(tiny_clip_dir, monkeypatch):
    monkeypatch.setitem(clip_text.KNOWN_TEXT_CONFIGS, "tiny/clip", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32))
    reference = FrozenCLIPEmbedder(version=tiny_clip_dir)
    state = {k.replace("text_model.", ""): v for k, v in reference.state_dict().items() if "position_ids" not in k}
    ours = FrozenCLIPEmbedder(version="tiny/clip")
    ours.load_state_dict(state, strict=True)
    assert torch.equal(ours.state_dict()["transformer.text_model.embeddings.position_ids"], torch.arange(77)[None])
    with torch.no_grad():
        torch.testing.assert_close(ours("a red circle"), reference("a red circle"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoder, ids", [
    ("FrozenCLIPEmbedder()", "[49406, 320, 736, 7117, 267, 320, 1746, 3999, 49407, 49407]"),  # SD 1.x
    ("FrozenOpenCLIPEmbedder(layer='penultimate')", "[49406, 320, 736, 7117, 267, 320, 1746, 3999, 49407, 0]"),
])
def test_sd_encoders_build_and_tokenize_without_importing_transformers_or_torch_dynamo(encoder, ids):
    code = ("import sys\n"
            "from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder\n"
            "from ldm.util.meta_init import no_random_init_on_meta\n"
            "from ldm.util.model_loading import parameters_on_meta\n"
            "with parameters_on_meta(), no_random_init_on_meta():  # as the checkpoint loader builds\n"
            f"    encoder = {encoder}\n"
            "tokens, _ = encoder.tokenize('a red circle, a blue square')\n"
            "imported = sorted(m for m in ('transformers', 'torch._dynamo') if m in sys.modules)\n"
            "print(tokens[0, :10].tolist(), imported)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, LDM_NATIVE_CLIP="1"))
    assert result.stdout.strip().splitlines()[-1] == f"{ids} []"


def test_tokenizer_is_built_when_asked_for_and_then_tokenizes_with_its_changes():
    with torch.device("meta"):
        encoder = FrozenCLIPEmbedder()
    before, _ = encoder.tokenize("a red circle, a blue square")
    assert encoder._tokenizer is None
    assert type(encoder.tokenizer).__name__ == "CLIPTokenizer"
    assert torch.equal(encoder.tokenize("a red circle, a blue square")[0], before)
    encoder.tokenizer.add_tokens(["<my-token>"])
    tokens, _ = encoder.tokenize("a <my-token> circle")
    assert tokens[0, :5].tolist() == [49406, 320, 49408, 7117, 49407]
