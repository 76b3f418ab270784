"""Karlo's CLIP (ldm/modules/karlo/kakao/models/clip.py and the CLIP readers of
ldm/modules/karlo/files.py): the tokenizer's rows and masks, the text features, loading OpenAI-named
state dicts and transformers CLIPModel directories (numbers equal transformers' own model), and
the refusal of OpenAI's TorchScript archive."""
import pytest
import torch

from ldm.modules.encoders.tokenizer import LongPromptWarning
from ldm.modules.karlo import KarloFileError
from ldm.modules.karlo.files import clip_state_dict_from_transformers
from ldm.modules.karlo.kakao.models.clip import CustomizedCLIP, CustomizedTokenizer
from ldm.util import save_checkpoint
from tests.modules.karlo.tiny import TINY_CLIP, tiny_clip

PROMPTS = ["a red circle", "a blue square on a green field", ""]


@pytest.fixture(scope="module")
def tokenizer():
    return CustomizedTokenizer()


def test_rows_are_start_ids_end_then_zeros_and_the_mask_marks_them(tokenizer):
    tokens, mask = tokenizer.padded_tokens_and_mask(["a red circle", ""], 8)
    assert tokens.tolist() == [[49406, 320, 736, 7117, 49407, 0, 0, 0], [49406, 49407, 0, 0, 0, 0, 0, 0]]
    assert mask.tolist() == [[True] * 5 + [False] * 3, [True] * 2 + [False] * 6]
    assert tokenizer.sot_token == 49406 and tokenizer.eot_token == 49407


def test_long_prompts_keep_the_end_token_last_and_are_reported(tokenizer):
    with pytest.warns(LongPromptWarning):
        tokens, mask = tokenizer.padded_tokens_and_mask(["a red circle " * 5], 6)
    assert tokens.tolist() == [[49406, 320, 736, 7117, 320, 49407]] and bool(mask.all())


def test_text_features_are_the_end_token_state_projected_and_all_states():
    clip = tiny_clip()
    tokens, _ = CustomizedTokenizer().padded_tokens_and_mask(PROMPTS, 77)
    with torch.no_grad():
        pooled, seq = clip.encode_text(tokens)
    assert seq.shape == (3, 77, TINY_CLIP.text_width) and pooled.shape == (3, TINY_CLIP.embed_dim)
    ends = [4, 8, 1]  # sot + 3 words, sot + 7 words, sot: then the end token
    torch.testing.assert_close(pooled, torch.stack([seq[i, e] for i, e in enumerate(ends)]) @ clip.text_projection)
    assert not hasattr(CustomizedCLIP(TINY_CLIP, with_visual=False), "visual")


def test_an_openai_named_state_dict_loads_text_tower_only(tmp_path):
    source = tiny_clip()
    path = tmp_path / "clip.pt"
    save_checkpoint({**source.state_dict(), "visual.proj": torch.zeros(4, 32), "input_resolution": torch.tensor(224)},
                    str(path))
    loaded = CustomizedCLIP.load_from_checkpoint(str(path))
    tokens, _ = CustomizedTokenizer().padded_tokens_and_mask(PROMPTS, 77)
    with torch.no_grad():
        for a, b in zip(loaded.encode_text(tokens), source.encode_text(tokens)):
            torch.testing.assert_close(a, b)
    assert not hasattr(loaded, "visual") and not any(p.requires_grad for p in loaded.parameters())


def _tiny_transformers_clip():
    from transformers import CLIPConfig, CLIPModel

    common = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  hidden_act="quick_gelu", projection_dim=32)
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, **common),
                        vision_config=dict(image_size=32, patch_size=8, **common), projection_dim=32)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_a_transformers_clip_directory_gives_transformers_numbers(tmp_path):
    hf = _tiny_transformers_clip()
    hf.save_pretrained(tmp_path / "clip-hf")
    ours = CustomizedCLIP.load_from_checkpoint(str(tmp_path / "clip-hf"), with_visual=True)
    tokens, _ = CustomizedTokenizer().padded_tokens_and_mask(PROMPTS, 77)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, seq = ours.encode_text(tokens)
        text = hf.text_model(input_ids=tokens)
        torch.testing.assert_close(seq, text.last_hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled, hf.text_projection(text.pooler_output), rtol=1e-5, atol=1e-5)
        expected_image = hf.visual_projection(hf.vision_model(pixel_values=image).pooler_output)
        torch.testing.assert_close(ours.encode_image(image), expected_image, rtol=1e-5, atol=1e-5)


def test_transformers_names_map_to_openai_names():
    hf_state = _tiny_transformers_clip().state_dict()
    converted = clip_state_dict_from_transformers(hf_state)
    prefix = "text_model.encoder.layers.1.self_attn."
    torch.testing.assert_close(converted["transformer.resblocks.1.attn.in_proj_weight"],
                               torch.cat([hf_state[prefix + p + "_proj.weight"] for p in "qkv"]))
    torch.testing.assert_close(converted["text_projection"], hf_state["text_projection.weight"].t())
    assert converted["visual.ln_pre.weight"] is hf_state["vision_model.pre_layrnorm.weight"]
    assert not any("position_ids" in k or k.startswith(("text_model.", "vision_model.")) for k in converted)


def test_openais_torchscript_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "ViT-L-14.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(KarloFileError) as err:
        CustomizedCLIP.load_from_checkpoint(str(path))
    message = str(err.value)
    assert "TorchScript" in message and str(path) in message and "convert" in message and "\n" not in message


@pytest.mark.parametrize("make,expected", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b"not a checkpoint at all"), "corrupted"),
    (lambda p: save_checkpoint({"weight": torch.zeros(2)}, str(p)), "has no token_embedding.weight"),
])
def test_wrong_clip_files_are_named_in_one_line(tmp_path, make, expected):
    path = tmp_path / "clip.safetensors"
    make(path)
    with pytest.raises(KarloFileError) as err:
        CustomizedCLIP.load_from_checkpoint(str(path))
    assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_folder_without_weights_is_named(tmp_path):
    with pytest.raises(KarloFileError, match="holds none of model.safetensors, pytorch_model.bin"):
        CustomizedCLIP.load_from_checkpoint(str(tmp_path))


def _openai_vit_l14_layout():
    """OpenAI CLIP ViT-L/14's tensors as the original unCLIP-L checkpoint stores them (its manifest)."""
    from tests.manifests import read_manifest

    return read_manifest("v2-1-stable-unclip-l-inference", "embedder.model.")


def test_the_architecture_read_from_openai_vit_l14_tensors_is_vit_l14():
    from ldm.modules.encoders.openclip import openai_arch
    from ldm.modules.karlo.files import clip_arch_from_state_dict

    shapes = {key: torch.empty(shape, device="meta") for key, shape in _openai_vit_l14_layout()}
    assert clip_arch_from_state_dict(shapes) == openai_arch("ViT-L/14")


def test_openai_clip_vit_large_patch14_renamed_is_the_openai_layout():
    """transformers' CLIPModel with openai/clip-vit-large-patch14's sizes (built on the meta device),
    renamed, has exactly OpenAI's keys and shapes (the unCLIP-L manifest)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, vocab_size=49408, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768), projection_dim=768)
    with torch.device("meta"):
        hf = CLIPModel(config)
    converted = clip_state_dict_from_transformers(hf.state_dict())
    assert sorted((k, tuple(v.shape)) for k, v in converted.items()) == sorted(_openai_vit_l14_layout())
