"""ldm/modules/lora/formats.py: the key formats of kohya-ss, PEFT and older diffusers files are
grouped into layers with the scale each format defines; other keys are reported, not guessed."""
import math

import pytest
import torch

from ldm.modules.lora.formats import group_layers, parse_lora


def _pair(stem, rank=4, n_in=8, n_out=6, down=".lora_down.weight", up=".lora_up.weight"):
    return {stem + down: torch.randn(rank, n_in), stem + up: torch.randn(n_out, rank)}


def _layers(state_dict, metadata=None):
    parsed = parse_lora(state_dict, metadata or {})
    return {(layer.component, layer.name): layer.scale for layer in parsed.layers}, parsed


@pytest.mark.parametrize("alpha, scale", [(None, 1.0), (0.0, 1.0), (8.0, 2.0), (1.0, 0.25)])
def test_kohya_scale_is_alpha_over_rank_with_no_or_zero_alpha_meaning_rank(alpha, scale):
    state_dict = _pair("lora_unet_down_blocks_0_attentions_0_proj_in")
    if alpha is not None:
        state_dict["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"] = torch.tensor(alpha)
    layers, parsed = _layers(state_dict)
    assert layers == {("unet", "down_blocks_0_attentions_0_proj_in"): scale}
    assert parsed.layers[0].underscored and not parsed.unknown_keys


def test_kohya_text_encoder_prefixes_te_and_te1_are_the_text_encoder_te2_is_not():
    state_dict = {**_pair("lora_te_text_model_encoder_layers_0_mlp_fc1"),
                  **_pair("lora_te1_text_model_encoder_layers_1_mlp_fc1"),
                  **_pair("lora_te2_text_model_encoder_layers_0_mlp_fc1")}
    layers, parsed = _layers(state_dict)
    assert set(layers) == {("text_encoder", "text_model_encoder_layers_0_mlp_fc1"),
                           ("text_encoder", "text_model_encoder_layers_1_mlp_fc1")}
    assert sorted(parsed.unknown_keys) == sorted(k for k in state_dict if k.startswith("lora_te2_"))


def test_peft_scale_comes_from_alpha_tensors_then_metadata_patterns_then_lora_alpha_else_one():
    state_dict = {**_pair("unet.a.to_q", down=".lora_A.weight", up=".lora_B.weight"),
                  **_pair("unet.b.to_k", down=".lora_A.weight", up=".lora_B.weight"),
                  **_pair("unet.c.to_v", rank=2, down=".lora_A.weight", up=".lora_B.weight"),
                  **_pair("text_encoder.text_model.encoder.layers.0.mlp.fc1", down=".lora_A.weight",
                          up=".lora_B.weight"),
                  "unet.a.to_q.alpha": torch.tensor(12.0)}
    metadata = {"lora_adapter_metadata": {"unet.lora_alpha": 8, "unet.alpha_pattern": {"b.to_k": 2}}}
    layers, _ = _layers(state_dict, metadata)
    assert layers == {("unet", "a.to_q"): 3.0, ("unet", "b.to_k"): 0.5, ("unet", "c.to_v"): 4.0,
                      ("text_encoder", "text_model.encoder.layers.0.mlp.fc1"): 1.0}
    rs_metadata = {"lora_adapter_metadata": {"unet.lora_alpha": 8, "unet.use_rslora": True}}
    assert _layers(state_dict, rs_metadata)[0][("unet", "c.to_v")] == pytest.approx(8 / math.sqrt(2))


@pytest.mark.parametrize("down, up, component, name", [
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight", None,
     "unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight", None,
     "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
    ("unet.up_blocks.1.attentions.0.proj_in.lora.down.weight", "unet.up_blocks.1.attentions.0.proj_in.lora.up.weight",
     "unet", "up_blocks.1.attentions.0.proj_in"),
    ("text_encoder.text_model.encoder.layers.3.self_attn.to_v_lora.down.weight", None,
     "text_encoder", "text_model.encoder.layers.3.self_attn.v_proj"),
    ("text_encoder.text_model.encoder.layers.3.mlp.fc2.lora_linear_layer.down.weight",
     "text_encoder.text_model.encoder.layers.3.mlp.fc2.lora_linear_layer.up.weight",
     "text_encoder", "text_model.encoder.layers.3.mlp.fc2"),
])
def test_older_diffusers_keys_name_the_layer_they_change(down, up, component, name):
    up = up or down.replace(".down.weight", ".up.weight")
    layers, unknown = group_layers({down: torch.randn(4, 8), up: torch.randn(8, 4)})
    assert [(layer.component, layer.name, layer.underscored, layer.complete) for layer in layers] == \
        [(component, name, False, True)]
    assert unknown == []


def test_keys_of_other_formats_and_incomplete_layers_are_unknown():
    state_dict = {"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2),
                  "lora_unet_conv_in.dora_scale": torch.zeros(2),
                  "lora_unet_conv_out.lora_down.weight": torch.zeros(4, 8),
                  "unet.conv_in.lora_magnitude_vector": torch.zeros(2),
                  "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.zeros(4, 8),
                  "model.diffusion_model.out.2.lora_A.weight": torch.zeros(4, 8),
                  **_pair("lora_unet_conv_in")}
    layers, parsed = _layers(state_dict)
    assert list(layers) == [("unet", "conv_in")]
    assert sorted(parsed.unknown_keys) == sorted(k for k in state_dict if not k.startswith("lora_unet_conv_in.lora_"))


def test_an_alpha_of_several_numbers_is_refused():
    from ldm.modules.lora import LoraError

    with pytest.raises(LoraError, match=r"lora_unet_conv_in\.alpha holds 2 numbers; an alpha is one number"):
        parse_lora({**_pair("lora_unet_conv_in"), "lora_unet_conv_in.alpha": torch.ones(2)}, {})
