"""ldm/modules/lora/apply.py: LoRA files applied to our UNet and text encoders give the outputs
diffusers gives after ``load_lora_weights`` on the same tiny models (kohya-ss, PEFT as diffusers
saves it, older attention-processor files; SD 1.x CLIP and SD 2.x OpenCLIP text encoders; several
LoRAs with weights), change no base weight, and come off leaving the exact original model."""
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.modules.encoders import clip_text, openclip
from ldm.modules.encoders.clip_text_tower import ClipTextModel
from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder
from ldm.modules.lora import LoraError, apply_lora
from ldm.util import instantiate_from_config
from tests.modules.encoders.clip_reference import save_tiny_clip_text_model
from tests.modules.lora.lora_fixtures import (
    SD1_LIKE,
    SD2_LIKE,
    TINY_OPENCLIP,
    UNET_PREFIX,
    clip_text_layers,
    clip_text_twin_from_openclip,
    diffusers_unet_config,
    lora_layers_of,
    perturb,
    tiny_unet,
    unet_inputs,
    write_attn_procs_lora,
    write_kohya_lora,
)
from tests.tiny_configs import tiny_latent_diffusion_config, tiny_unet_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip_text_model(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def tiny_openclip(monkeypatch):
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    monkeypatch.setitem(openclip.OPENCLIP_ARCHS, "tiny-lora", TINY_OPENCLIP)
    return perturb(FrozenOpenCLIPEmbedder(arch="tiny-lora", layer="penultimate"), std=0.05)


def _diffusers_unet(params, unet):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = diffusers_unet_config(params, unet)
    twin = UNet2DConditionModel(**config)
    checkpoint = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    twin.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    return twin.eval()


def _pipeline(unet, text_encoder):
    """A diffusers StableDiffusionPipeline around the twins (tiny VAE, nothing downloaded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    from ldm.modules.encoders.tokenizer import build_clip_tokenizer

    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4, norm_num_groups=32)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


class Pair:
    """Our tiny UNet and SD 1.x text encoder, and a diffusers pipeline holding the same weights."""

    def __init__(self, params, clip_dir, text_model_name=None):
        """``text_model_name``: a known name of ours to build the SD 1.x encoder with our own text
        model (given the directory's weights) instead of transformers' ``CLIPTextModel``."""
        from transformers import CLIPTextModel

        self.params = params
        self.unet = tiny_unet(params)
        self.encoder = FrozenCLIPEmbedder(version=clip_dir)
        if text_model_name is not None:
            weights = self.encoder.state_dict()
            self.encoder = FrozenCLIPEmbedder(version=text_model_name)
            self.encoder.load_state_dict(weights, strict=True)
        self.pipe = _pipeline(_diffusers_unet(params, self.unet), CLIPTextModel.from_pretrained(clip_dir).eval())
        self.unet_layers = lora_layers_of(self.pipe.unet)
        self.text_layers = clip_text_layers(self.pipe.text_encoder)
        self.tokens = torch.randint(1, 49406, (2, 77), generator=torch.Generator().manual_seed(5))

    def outputs(self):
        x, t, context = unet_inputs(self.params)
        with torch.no_grad():
            ours = (self.unet(x, t, context=context), self.encoder.encode_tokens(self.tokens))
            theirs = (self.pipe.unet(x, t, encoder_hidden_states=context).sample,
                      self.pipe.text_encoder(self.tokens).last_hidden_state)
        return ours, theirs


def _assert_same(pair, before):
    (unet_out, text_out), (their_unet, their_text) = pair.outputs()
    torch.testing.assert_close(unet_out, their_unet, **TOLERANCE)
    torch.testing.assert_close(text_out, their_text, **TOLERANCE)
    assert (unet_out - before[0]).abs().max() > 0.1 and (text_out - before[1]).abs().max() > 0.1
    return unet_out, text_out


def _apply_both(pair, path, weight=1.0):
    return [apply_lora(pair.unet, path, weight, verbose=False), apply_lora(pair.encoder, path, weight, verbose=False)]


# ---------------------------------------------------------------------------------------------
# Equivalence with diffusers
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_text_model_name(monkeypatch):
    """A known name whose built-in config is the tiny directory's (our own CLIP text model)."""
    monkeypatch.setitem(clip_text.KNOWN_TEXT_CONFIGS, "tiny/clip-lora", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32))
    return "tiny/clip-lora"


@pytest.mark.parametrize("params, text_model", [(SD1_LIKE, "transformers"), (SD2_LIKE, "transformers"),
                                                (SD1_LIKE, "ours")], ids=["sd1-like", "sd2-like", "sd1-our-clip"])
def test_kohya_lora_on_every_linear_and_conv_equals_diffusers(params, text_model, clip_dir, tiny_text_model_name,
                                                              tmp_path):
    pair = Pair(params, clip_dir, tiny_text_model_name if text_model == "ours" else None)
    assert isinstance(pair.encoder.transformer, ClipTextModel) == (text_model == "ours")
    (before, theirs_before) = pair.outputs()
    torch.testing.assert_close(before, theirs_before, rtol=0, atol=0)
    path = write_kohya_lora(tmp_path / "kohya.safetensors", pair.unet_layers, pair.text_layers)
    assert any(len(shape) == 4 and shape[2:] == (3, 3) for shape in pair.unet_layers.values())
    pair.pipe.load_lora_weights(path, adapter_name="kohya")
    handles = _apply_both(pair, path)
    _assert_same(pair, before)
    assert sum(len(h.layers) for h in handles) == len(pair.unet_layers) + len(pair.text_layers)


def _save_as_peft(pipe, folder, with_metadata):
    from peft.utils import get_peft_model_state_dict

    extra = {}
    if with_metadata:
        extra = dict(unet_lora_adapter_metadata=pipe.unet.peft_config["kohya"].to_dict(),
                     text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["kohya"].to_dict())
    pipe.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet, adapter_name="kohya"),
                           text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder, adapter_name="kohya"),
                           **extra)
    return str(folder / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("with_metadata", [True, False], ids=["alphas-in-metadata", "no-alphas"])
def test_peft_lora_saved_by_diffusers_equals_diffusers(with_metadata, clip_dir, tmp_path):
    source = Pair(SD1_LIKE, clip_dir)
    source.pipe.load_lora_weights(write_kohya_lora(tmp_path / "kohya.safetensors", source.unet_layers,
                                                   source.text_layers), adapter_name="kohya")
    path = _save_as_peft(source.pipe, tmp_path, with_metadata)
    pair = Pair(SD1_LIKE, clip_dir)
    before, _ = pair.outputs()
    pair.pipe.load_lora_weights(path, adapter_name="peft")
    _apply_both(pair, path)
    _assert_same(pair, before)


def test_attention_processor_lora_equals_diffusers(clip_dir, tmp_path):
    pair = Pair(SD1_LIKE, clip_dir)
    before, _ = pair.outputs()
    path = write_attn_procs_lora(tmp_path / "procs.safetensors", pair.unet_layers)
    pair.pipe.load_lora_weights(path, adapter_name="procs")
    handle = apply_lora(pair.unet, path, verbose=False)
    (unet_out, _), (their_unet, _) = pair.outputs()
    torch.testing.assert_close(unet_out, their_unet, **TOLERANCE)
    assert (unet_out - before[0]).abs().max() > 0.1
    transformer_blocks = sum(1 for name in pair.unet_layers if name.endswith("attn1.to_q"))
    assert len(handle.layers) == 2 * 4 * transformer_blocks  # attn1 and attn2: q, k, v, out


def test_two_loras_with_weights_equal_diffusers_adapters(clip_dir, tmp_path):
    pair = Pair(SD1_LIKE, clip_dir)
    before, _ = pair.outputs()
    first = write_kohya_lora(tmp_path / "a.safetensors", pair.unet_layers, pair.text_layers, seed=1)
    second = write_kohya_lora(tmp_path / "b.safetensors", pair.unet_layers, pair.text_layers, seed=2)
    pair.pipe.load_lora_weights(first, adapter_name="a")
    pair.pipe.load_lora_weights(second, adapter_name="b")
    pair.pipe.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    _apply_both(pair, first, 0.7)
    _apply_both(pair, second, -0.4)
    _assert_same(pair, before)


def test_kohya_lora_on_the_sd2_openclip_text_encoder_equals_diffusers(tiny_openclip, tmp_path):
    """kohya and diffusers name SD 2.x's text encoder as transformers' CLIPTextModel; ours is
    OpenCLIP with q/k/v packed in in_proj_weight."""
    from diffusers import StableDiffusionPipeline

    twin = clip_text_twin_from_openclip(tiny_openclip)
    tokens = torch.randint(1, 49406, (2, 77), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = tiny_openclip.encode_with_transformer(tokens)
        torch.testing.assert_close(before, twin(tokens).last_hidden_state, **TOLERANCE)
    path = write_kohya_lora(tmp_path / "sd2-te.safetensors", {}, clip_text_layers(twin))
    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(path)
    StableDiffusionPipeline.load_lora_into_text_encoder(state_dict, alphas, twin, adapter_name="kohya")
    handle = apply_lora(tiny_openclip, path, verbose=False)
    with torch.no_grad():
        ours, theirs = tiny_openclip.encode_with_transformer(tokens), twin(tokens).last_hidden_state
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    assert (ours - before).abs().max() > 0.1
    assert len(handle.layers) == 6 * (TINY_OPENCLIP.text_layers - 1)


# ---------------------------------------------------------------------------------------------
# No copies, exact removal, weights
# ---------------------------------------------------------------------------------------------
def _kohya_for(unet, tmp_path, name="kohya.safetensors", seed=1, params=SD1_LIKE):
    """A kohya file for every layer of ``unet`` (built from ``params``), UNet only."""
    return write_kohya_lora(tmp_path / name, lora_layers_of(_diffusers_unet(params, unet)), {}, seed=seed)


def test_lora_changes_no_base_weight_and_removal_restores_the_exact_unet(tmp_path):
    unet = tiny_unet(SD1_LIKE)
    path = _kohya_for(unet, tmp_path)
    params_before = {name: (p, p.data_ptr(), p.clone()) for name, p in unet.named_parameters()}
    keys_before = list(unet.state_dict())
    x, t, context = unet_inputs(SD1_LIKE)
    with torch.no_grad():
        base = unet(x, t, context=context)
        handle = apply_lora(unet, path, verbose=False)
        changed = unet(x, t, context=context)
        assert list(unet.state_dict()) == keys_before
        for name, p in unet.named_parameters():
            assert p is params_before[name][0] and p.data_ptr() == params_before[name][1]
            assert torch.equal(p, params_before[name][2])
        handle.remove()
        handle.remove()
        restored = unet(x, t, context=context)
    assert (changed - base).abs().max() > 0.1
    assert torch.equal(restored, base)
    assert not any(m._forward_hooks for m in unet.modules())


def test_removal_restores_the_openclip_weights_objects_and_outputs(tiny_openclip, tmp_path):
    attention = tiny_openclip.model.transformer.resblocks[0].attn
    packed, out_proj = attention.in_proj_weight, attention.out_proj.weight
    keys_before = list(tiny_openclip.state_dict())
    twin = clip_text_twin_from_openclip(tiny_openclip)
    path = write_kohya_lora(tmp_path / "te.safetensors", {}, clip_text_layers(twin))
    tokens = torch.randint(1, 49406, (1, 77))
    with torch.no_grad():
        base = tiny_openclip.encode_with_transformer(tokens)
        with apply_lora(tiny_openclip, path, verbose=False):
            assert attention.parametrizations.in_proj_weight.original is packed
            changed = tiny_openclip.encode_with_transformer(tokens)
        restored = tiny_openclip.encode_with_transformer(tokens)
    assert (changed - base).abs().max() > 0.1
    assert torch.equal(restored, base)
    assert attention.in_proj_weight is packed and attention.out_proj.weight is out_proj
    assert type(attention) is openclip.SelfAttention and list(tiny_openclip.state_dict()) == keys_before


def test_weight_zero_gives_the_base_outputs_bit_for_bit_and_the_weight_scales_the_change(tmp_path):
    unet = tiny_unet(SD1_LIKE)
    path = _kohya_for(unet, tmp_path)
    layer = unet.time_embed[0]
    x = torch.randn(3, layer.in_features)
    x_unet, t, context = unet_inputs(SD1_LIKE)
    with torch.no_grad():
        base, base_unet = layer(x), unet(x_unet, t, context=context)
        handle = apply_lora(unet, path, weight=0.0, verbose=False)
        assert torch.equal(layer(x), base) and torch.equal(unet(x_unet, t, context=context), base_unet)
        handle.weight = 1.0
        one = layer(x) - base
        handle.weight = -2.5
        torch.testing.assert_close(layer(x) - base, -2.5 * one, **TOLERANCE)
    assert one.abs().max() > 0.1


def test_two_loras_add_and_removing_one_keeps_the_other(tmp_path):
    unet = tiny_unet(SD1_LIKE)
    first, second = _kohya_for(unet, tmp_path, "a.safetensors", 1), _kohya_for(unet, tmp_path, "b.safetensors", 2)
    layer = unet.input_blocks[1][0].in_layers[2]  # a 3x3 convolution
    x = torch.randn(2, layer.in_channels, 8, 8)
    with torch.no_grad():
        base = layer(x)
        with apply_lora(unet, first, verbose=False):
            only_first = layer(x) - base
        with apply_lora(unet, second, verbose=False):
            only_second = layer(x) - base
        handle_first = apply_lora(unet, first, verbose=False)
        handle_second = apply_lora(unet, second, 0.5, verbose=False)
        torch.testing.assert_close(layer(x) - base, only_first + 0.5 * only_second, **TOLERANCE)
        handle_first.remove()
        torch.testing.assert_close(layer(x) - base, 0.5 * only_second, **TOLERANCE)
        handle_second.remove()
        assert torch.equal(layer(x), base)


def test_lora_on_a_latent_diffusion_model_changes_apply_model_and_comes_off(tmp_path):
    model = perturb(instantiate_from_config(tiny_latent_diffusion_config()))
    unet = model.model.diffusion_model
    path = _kohya_for(unet, tmp_path, params=OmegaConf.to_container(tiny_unet_config().params))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    context = torch.randn(1, 3, 32)
    with torch.no_grad():
        base = model.apply_model(x, t, context)
        handle = apply_lora(model, path, verbose=False)
        changed = model.apply_model(x, t, context)
        handle.remove()
        restored = model.apply_model(x, t, context)
    assert handle.layers[0].startswith("model.diffusion_model.")
    assert (changed - base).abs().max() > 0.01 and torch.equal(restored, base)


# ---------------------------------------------------------------------------------------------
# Reports and errors
# ---------------------------------------------------------------------------------------------
def test_unused_tensors_are_reported_by_number_with_examples(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    unet = tiny_unet(SD1_LIKE)
    tensors = load_file(_kohya_for(unet, tmp_path))
    tensors.update({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
                    "lora_unet_conv_in.hada_w1_a": torch.zeros(4, 4),
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)})
    save_file(tensors, str(tmp_path / "extra.safetensors"))
    handle = apply_lora(unet, str(tmp_path / "extra.safetensors"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(handle.unused_keys) == 3
    assert lines[0].startswith(f"LoRA {tmp_path / 'extra.safetensors'}: {len(handle.layers)} layers (UNet ")
    assert lines[1].endswith("3 tensors not used by the model (e.g. " + ", ".join(handle.unused_keys) + ")")
    handle.remove()


def test_a_file_that_matches_nothing_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4)},
              str(tmp_path / "te-only.safetensors"))
    with pytest.raises(LoraError) as info:
        apply_lora(tiny_unet(SD1_LIKE), str(tmp_path / "te-only.safetensors"))
    message = str(info.value)
    assert "\n" not in message
    assert "matches no layer of the model (UNet)" in message and "none of its 2 tensors" in message


def test_layers_of_the_wrong_shape_are_refused_and_nothing_is_applied(tmp_path):
    sd2_unet = tiny_unet(SD2_LIKE)
    path = write_kohya_lora(tmp_path / "sd2.safetensors", lora_layers_of(_diffusers_unet(SD2_LIKE, sd2_unet)), {})
    unet = tiny_unet(SD1_LIKE)
    shape_error = (r"does not fit the model: \d+ LoRA layers of the wrong shape \(e\.g\. \S*attn2_to_k: down 4x48, "
                   r"up (\d+)x4 vs \S*attn2\.to_k \1x32\); is it made for another base model \(SD 1\.x vs 2\.x\)\?$")
    with pytest.raises(LoraError, match=shape_error):
        apply_lora(unet, path)
    assert not any(m._forward_hooks for m in unet.modules())


def test_a_model_with_two_unets_is_refused(tmp_path):
    pair = nn.ModuleDict({"a": tiny_unet(SD1_LIKE), "b": tiny_unet(SD1_LIKE)})
    path = _kohya_for(pair["a"], tmp_path)
    with pytest.raises(LoraError, match="the model holds 2 UNets"):
        apply_lora(pair, path)


def test_weight_deltas_reach_torch_multihead_attention_as_open_clip_builds_it():
    """With open_clip installed the SD 2.x text tower uses nn.MultiheadAttention, which reads
    in_proj_weight and out_proj.weight without calling out_proj: both get their rows changed."""
    from ldm.modules.lora.apply import LoraHandle, _attach, _LoraBranch
    from ldm.modules.lora.naming import LoraTarget

    attention = nn.MultiheadAttention(32, 4).eval()
    x = torch.randn(5, 2, 32)
    down_k, up_k, down_o, up_o = torch.randn(4, 32), torch.randn(32, 4), torch.randn(4, 32), torch.randn(32, 4)
    expected_in = attention.in_proj_weight.detach().clone()
    expected_in[32:64] += 0.5 * up_k @ down_k
    expected_out = attention.out_proj.weight.detach() + 0.5 * up_o @ down_o
    handle = LoraHandle("test", 1.0, [], [], {})
    with torch.no_grad():
        base = attention(x, x, x, need_weights=False)[0]
        handle._undo.append(_attach(handle, LoraTarget("k", attention, "in_proj_weight", (32, 64)),
                                    _LoraBranch(handle, down_k, up_k, 0.5)))
        handle._undo.append(_attach(handle, LoraTarget("out", attention.out_proj, "weight"),
                                    _LoraBranch(handle, down_o, up_o, 0.5)))
        changed = attention(x, x, x, need_weights=False)[0]
        expected = nn.functional.multi_head_attention_forward(
            x, x, x, 32, 4, expected_in, attention.in_proj_bias, None, None, False, 0.0, expected_out,
            attention.out_proj.bias, training=False, need_weights=False)[0]
        handle.remove()
        restored = attention(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(changed, expected, **TOLERANCE)
    assert (changed - base).abs().max() > 0.1 and torch.equal(restored, base)


def test_text_encoder_layers_a_non_clip_encoder_cannot_take_are_named_in_plain_words(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from ldm.modules.encoders.shapes_text import ShapesTextEncoder

    model = nn.Module()
    model.unet = tiny_unet(SD1_LIKE)
    model.cond_stage_model = ShapesTextEncoder(["red", "circle"], width=32, layers=1, heads=2)
    tensors = load_file(_kohya_for(model.unet, tmp_path))
    for name in ("q_proj", "k_proj"):
        key = f"lora_te_text_model_encoder_layers_0_self_attn_{name}"
        tensors.update({f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4)})
    save_file(tensors, str(tmp_path / "with-te.safetensors"))
    handle = apply_lora(model, str(tmp_path / "with-te.safetensors"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert handle.counts == {"unet": len(handle.layers)} and len(handle.unused_keys) == 4
    assert lines[-1] == (f"LoRA {tmp_path / 'with-te.safetensors'}: its 2 text-encoder layers are not used: the "
                         "model's text encoder is ShapesTextEncoder, not a CLIP text encoder of SD 1.x/2.x, which is "
                         "what LoRA files name; only the UNet is changed")
    handle.remove()
