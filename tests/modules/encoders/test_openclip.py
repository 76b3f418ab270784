"""OpenCLIP / OpenAI CLIP towers (ldm/modules/encoders/openclip.py) and the encoders built on them:
layouts equal the original checkpoints' (manifests), numerics equal an independent reference
computed with torch.nn.MultiheadAttention in the original sequence-first layout, and open_clip
itself where it is importable."""
import importlib
import socket
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ldm.modules.encoders import openclip
from ldm.modules.encoders.modules import (ClipImageEmbedder, FrozenOpenCLIPEmbedder, FrozenOpenCLIPImageEmbedder)
from ldm.modules.encoders.openclip import CLIP, CLIPArch
from tests.manifests import layout_of, read_manifest
from tests.modules.encoders.clip_reference import (LONG_PROMPT, PROMPTS, SOT, EOT, quick_gelu, reference_content_ids,
                                                  reference_image_embedding, reference_open_clip_tokenize,
                                                  reference_text_states)

TINY = CLIPArch(embed_dim=16, text_width=32, text_heads=4, text_layers=3, vision_width=32, vision_layers=2,
                vision_heads=4, patch_size=8, image_size=32)


@pytest.fixture
def tiny_archs(monkeypatch):
    """Tiny architectures of our own towers (open_clip, where importable, does not know them)."""
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    monkeypatch.setitem(openclip.OPENCLIP_ARCHS, "tiny-test", TINY)
    monkeypatch.setitem(openclip.OPENAI_ARCHS, "tiny/test", CLIPArch(**{**TINY.__dict__, "quick_gelu": True,
                                                                        "openai_layout": True}))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an encoder tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def perturbed(module):
    """Move every parameter off its initial value (LayerNorms would otherwise be the identity)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def test_v2_text_encoder_builds_offline_with_the_v2_manifest_layout(no_network):
    with torch.device("meta"):
        encoder = FrozenOpenCLIPEmbedder(layer="penultimate")
    assert layout_of(encoder) == read_manifest("v2-inference", "cond_stage_model.")


def test_unclip_h_image_embedder_has_the_manifest_layout(no_network):
    with torch.device("meta"):
        embedder = FrozenOpenCLIPImageEmbedder()
    assert layout_of(embedder) == read_manifest("v2-1-stable-unclip-h-inference", "embedder.")


def test_unclip_l_image_embedder_has_the_manifest_layout_of_openai_clip(no_network):
    with torch.device("meta"):
        embedder = ClipImageEmbedder(model="ViT-L/14")
    assert layout_of(embedder) == read_manifest("v2-1-stable-unclip-l-inference", "embedder.")


@pytest.mark.parametrize("layer,skipped", [("last", 0), ("penultimate", 1)])
def test_native_text_tower_equals_reference_blocks(tiny_archs, layer, skipped):
    encoder = FrozenOpenCLIPEmbedder(arch="tiny-test", layer=layer)
    perturbed(encoder.model)
    texts = ["a red circle", "a blue square on a green field", ""]
    tokens = reference_open_clip_tokenize(texts)
    expected = reference_text_states(encoder.model.state_dict(), tokens, TINY.text_heads, TINY.text_layers - skipped)
    with torch.no_grad():
        got = encoder(texts)
    assert got.shape == (3, 77, TINY.text_width)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_penultimate_output_differs_from_last(tiny_archs):
    last = perturbed(FrozenOpenCLIPEmbedder(arch="tiny-test", layer="last"))
    penultimate = FrozenOpenCLIPEmbedder(arch="tiny-test", layer="penultimate")
    penultimate.load_state_dict(last.state_dict())
    with torch.no_grad():
        assert not torch.allclose(last("a red circle"), penultimate("a red circle"), atol=1e-4)


class SequenceFirstBlock(nn.Module):
    """Runs a block on [L, N, D] input, the layout open_clip 2.x blocks take."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x, attn_mask=None):
        return self.block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def test_sequence_first_towers_like_open_clip_2_give_the_same_states(tiny_archs):
    encoder = perturbed(FrozenOpenCLIPEmbedder(arch="tiny-test", layer="penultimate"))
    with torch.no_grad():
        batch_first = encoder(["a red circle", "blue"])
        encoder.model.transformer.batch_first = False
        encoder.model.transformer.resblocks = nn.ModuleList(
            SequenceFirstBlock(b) for b in encoder.model.transformer.resblocks)
        torch.testing.assert_close(encoder(["a red circle", "blue"]), batch_first)


def test_encoder_tokens_follow_open_clip_rules(tiny_archs):
    encoder = FrozenOpenCLIPEmbedder(arch="tiny-test")
    with pytest.warns(UserWarning, match="tokens dropped"):
        tokens, windows = encoder.tokenize(PROMPTS)
    assert windows == 1
    assert torch.equal(tokens, reference_open_clip_tokenize(PROMPTS))


def test_vision_tower_equals_reference_for_open_clip_and_openai_layouts(tiny_archs):
    image = torch.randn(2, 3, 32, 32)
    for model, act in ((CLIP(openclip.openclip_arch("tiny-test")), F.gelu),
                       (CLIP(openclip.openai_arch("tiny/test")), quick_gelu)):
        perturbed(model)
        expected = reference_image_embedding(model.state_dict(), image, TINY.vision_heads, TINY.vision_layers,
                                             TINY.patch_size, act)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(image), expected, rtol=1e-5, atol=1e-5)


def test_openai_layout_orders_block_parameters_attn_ln1_mlp_ln2(tiny_archs):
    state = CLIP(openclip.openai_arch("tiny/test")).state_dict()
    keys = [k for k in state if k.startswith("transformer.resblocks.0.")]
    assert [k.split(".")[3] for k in keys] == ["attn"] * 4 + ["ln_1"] * 2 + ["mlp"] * 4 + ["ln_2"] * 2


def test_open_clip_text_tower_equals_native_on_same_weights(monkeypatch):
    try:
        open_clip = importlib.import_module("open_clip")
    except Exception as err:  # the optional package, or its torchvision import, is unusable here
        pytest.skip(f"open_clip is not importable here ({type(err).__name__}: {err})")
    monkeypatch.delenv(openclip.NATIVE_ENV, raising=False)
    reference = FrozenOpenCLIPEmbedder(arch="ViT-B-32", layer="penultimate")
    assert not isinstance(reference.model, CLIP)
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    native = FrozenOpenCLIPEmbedder(arch="ViT-B-32", layer="penultimate")
    assert isinstance(native.model, CLIP)
    native.load_state_dict(perturbed(reference).state_dict())
    assert torch.equal(native.tokenize(PROMPTS)[0], open_clip.tokenize(PROMPTS))
    with torch.no_grad():
        torch.testing.assert_close(native(PROMPTS), reference(PROMPTS), rtol=1e-4, atol=1e-4)


def test_environment_switch_forces_native_tower_over_importable_open_clip(tiny_archs, monkeypatch):
    fake = types.ModuleType("open_clip")
    fake.create_model = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("fake open_clip was used"))
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    monkeypatch.delenv(openclip.NATIVE_ENV, raising=False)
    with pytest.raises(RuntimeError, match="fake open_clip was used"):
        FrozenOpenCLIPEmbedder(arch="tiny-test")
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    assert isinstance(FrozenOpenCLIPEmbedder(arch="tiny-test").model, CLIP)


def test_unknown_architecture_raises_with_known_names(monkeypatch):
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    with pytest.raises(ValueError, match="unknown OpenCLIP architecture 'ViT-Q-7'.*ViT-H-14"):
        FrozenOpenCLIPEmbedder(arch="ViT-Q-7")


def test_frozen_encoder_stays_in_eval_without_gradients_and_unfrozen_one_trains(tiny_archs):
    frozen = FrozenOpenCLIPEmbedder(arch="tiny-test")
    frozen.train()
    assert not frozen.training and not frozen.model.training
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = FrozenOpenCLIPEmbedder(arch="tiny-test", freeze=False)
    trainable.train()
    assert trainable.model.training and all(p.requires_grad for p in trainable.parameters())
    trainable("a red circle").sum().backward()
    assert trainable.model.token_embedding.weight.grad is not None


def test_long_prompt_warns_once_and_chunking_keeps_the_rest(tiny_archs):
    n_content = len(reference_content_ids(LONG_PROMPT))
    assert 150 < n_content <= 225
    cut = FrozenOpenCLIPEmbedder(arch="tiny-test")
    with pytest.warns(UserWarning, match=f"{n_content - 75} tokens dropped") as caught:
        z_cut = cut(LONG_PROMPT)
        cut([LONG_PROMPT, "short"])
    dropped = [w for w in caught if "tokens dropped" in str(w.message)]  # (also: random weights, said once)
    assert len(dropped) == 1 and z_cut.shape == (1, 77, TINY.text_width)
    chunked = FrozenOpenCLIPEmbedder(arch="tiny-test", chunk_long_prompts=True)
    chunked.load_state_dict(perturbed(cut).state_dict())
    with torch.no_grad():
        z = chunked([LONG_PROMPT, "short"])
        assert z.shape == (2, 3 * 77, TINY.text_width)
        torch.testing.assert_close(z[:1, :77], cut(LONG_PROMPT))
        torch.testing.assert_close(z[1:, :77], cut("short"))
        torch.testing.assert_close(z[1:, 77:154], cut(""))
        rows, windows = chunked.tokenize(LONG_PROMPT)
        content = reference_content_ids(LONG_PROMPT)
        assert windows == 3 and rows[2, :n_content - 148].tolist() == [SOT] + content[150:] + [EOT]
        torch.testing.assert_close(z[:1, 154:], cut.encode_with_transformer(rows[2:]))


def test_batch_of_prompts_equals_prompts_encoded_one_by_one(tiny_archs):
    encoder = perturbed(FrozenOpenCLIPEmbedder(arch="tiny-test"))
    texts = ("a red circle", "", "two green triangles")
    with torch.no_grad():
        batch = encoder(texts)
        for i, text in enumerate(texts):
            torch.testing.assert_close(batch[i:i + 1], encoder(text), rtol=1e-5, atol=1e-6)


def test_image_embedders_give_pooled_embeddings_and_drop_rows_at_ucg_rate_one(tiny_archs):
    image = torch.rand(2, 3, 40, 40) * 2 - 1
    h = FrozenOpenCLIPImageEmbedder(arch="tiny-test", ucg_rate=1.0)
    l = ClipImageEmbedder(model="tiny/test", ucg_rate=1.0)
    for embedder in (h, l):
        with torch.no_grad():
            kept = embedder(image, no_dropout=True)
            dropped = embedder(image)
        assert kept.shape == (2, TINY.embed_dim) and kept.abs().sum() > 0
        assert torch.count_nonzero(dropped) == 0


def test_image_preprocessing_maps_minus_one_one_to_clip_normalised_pixels(tiny_archs):
    embedder = ClipImageEmbedder(model="tiny/test")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    torch.testing.assert_close(embedder.preprocess(x), ((x + 1) / 2 - mean) / std)


def test_image_embedder_rejects_penultimate_layer():
    with pytest.raises(NotImplementedError, match="layer='pooled' only"):
        FrozenOpenCLIPImageEmbedder(layer="penultimate")


def test_arch_overrides_shrink_the_original_towers_keeping_their_names(no_network):
    sizes = {"embed_dim": 16, "vision_width": 32, "vision_layers": 1, "vision_heads": 2, "patch_size": 8,
             "image_size": 32, "text_width": 32, "text_heads": 2, "text_layers": 2}
    with torch.device("meta"):
        full = FrozenOpenCLIPImageEmbedder()
    small = FrozenOpenCLIPImageEmbedder(arch_overrides=sizes)
    assert set(small.state_dict()) < set(full.state_dict())  # the same names, fewer blocks
    assert small.model.visual.proj.shape == (32, 16) and len(small.model.visual.transformer.resblocks) == 1
    l_small = ClipImageEmbedder(model="ViT-L/14", arch_overrides=sizes)
    assert l_small(torch.rand(2, 3, 40, 40) * 2 - 1).shape == (2, 16)
    text = FrozenOpenCLIPEmbedder(layer="penultimate", arch_overrides=sizes)
    assert text("a red circle").shape == (1, 77, 32)
    with pytest.raises(ValueError, match="arch_overrides: unknown CLIP size\\(s\\) widht"):
        ClipImageEmbedder(model="ViT-L/14", arch_overrides={"widht": 3})
