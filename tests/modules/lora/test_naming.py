"""ldm/modules/lora/naming.py: the ldm -> diffusers UNet names equal diffusers' own checkpoint
converter on tiny and full-size SD 1.x/2.x layouts (and a diffusers UNet loaded with them gives
our outputs); every layer a LoRA may change is found under the names files use."""
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.modules.encoders import openclip
from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder
from ldm.modules.lora import LoraError, lora_targets, unet_diffusers_names, unet_state_dict_to_diffusers
from ldm.modules.lora.naming import find_lora_components, underscored
from ldm.util import instantiate_from_config
from tests.manifests import MANIFEST_CONFIGS, REPO_ROOT
from tests.modules.encoders.clip_reference import save_tiny_clip_text_model
from tests.modules.lora.lora_fixtures import (
    SD1_LIKE,
    SD2_LIKE,
    TINY_OPENCLIP,
    UNET_PREFIX,
    diffusers_unet_config,
    tiny_unet,
    unet_inputs,
)
from tests.tiny_configs import tiny_latent_diffusion_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _diffusers_converted(params, unet, config):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in unet.state_dict().items()}, config)


@pytest.mark.parametrize("params", [SD1_LIKE, SD2_LIKE], ids=["sd1-like", "sd2-like"])
def test_unet_state_dict_in_diffusers_names_equals_diffusers_converter(params):
    unet = tiny_unet(params)
    ours = unet_state_dict_to_diffusers(unet)
    theirs = _diffusers_converted(params, unet, diffusers_unet_config(params, unet))
    assert ours.keys() == theirs.keys()
    assert all(ours[key] is theirs[key] or torch.equal(ours[key], theirs[key]) for key in ours)


@pytest.mark.parametrize("params", [SD1_LIKE, SD2_LIKE], ids=["sd1-like", "sd2-like"])
def test_diffusers_unet_loaded_with_our_names_gives_our_outputs(params):
    from diffusers import UNet2DConditionModel

    unet = tiny_unet(params)
    twin = UNet2DConditionModel(**diffusers_unet_config(params, unet)).eval()
    twin.load_state_dict(unet_state_dict_to_diffusers(unet), strict=True)
    x, t, context = unet_inputs(params)
    with torch.no_grad():
        ours, theirs = unet(x, t, context=context), twin(x, t, encoder_hidden_states=context).sample
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["v1-inference", "v2-inference"])
def test_full_size_unet_names_equal_diffusers_converter(name):
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    original = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / MANIFEST_CONFIGS[name]))
    with torch.device("meta"):
        unet = instantiate_from_config(original["model"]["params"]["unet_config"])
    checkpoint = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    config = create_unet_diffusers_config_from_ldm(original, checkpoint)
    assert unet_state_dict_to_diffusers(unet).keys() == _diffusers_converted(None, unet, config).keys()
    names = unet_diffusers_names(unet)
    assert names["input_blocks.1.1.transformer_blocks.0.attn1.to_q"] == \
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert names["output_blocks.11.1.proj_out"] == "up_blocks.3.attentions.2.proj_out"
    assert names["output_blocks.2.1.conv"] == "up_blocks.0.upsamplers.0.conv"
    assert names["input_blocks.3.0.op"] == "down_blocks.0.downsamplers.0.conv"
    assert names["middle_block.2.emb_layers.1"] == "mid_block.resnets.1.time_emb_proj"


def test_unet_targets_answer_to_diffusers_kohya_and_ldm_names():
    unet = tiny_unet(SD1_LIKE)
    table = lora_targets(unet)["unet"]
    kohya = underscored(table)
    layer = unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    assert table["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"].module is layer
    assert table["input_blocks.1.1.transformer_blocks.0.attn1.to_q"].module is layer
    assert kohya["down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].module is layer
    assert kohya["down_blocks_0_resnets_0_conv1"].module is unet.input_blocks[1][0].in_layers[2]
    layers = {m for m in unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert {target.module for target in table.values()} == layers


def test_clip_text_targets_are_transformers_names_with_and_without_text_model(tmp_path):
    encoder = FrozenCLIPEmbedder(version=save_tiny_clip_text_model(tmp_path))
    table = lora_targets(encoder)["text_encoder"]
    q_proj = table["text_model.encoder.layers.1.self_attn.q_proj"]
    assert q_proj is table["encoder.layers.1.self_attn.q_proj"]
    assert q_proj.path == "transformer.text_model.encoder.layers.1.self_attn.q_proj" and q_proj.tensor is None
    assert len({id(t.module) for t in table.values()}) == 2 * 6  # 2 layers: q, k, v, out, fc1, fc2


def test_openclip_q_k_v_are_row_blocks_of_the_packed_projection(monkeypatch):
    monkeypatch.setenv(openclip.NATIVE_ENV, "1")
    monkeypatch.setitem(openclip.OPENCLIP_ARCHS, "tiny-lora", TINY_OPENCLIP)
    encoder = FrozenOpenCLIPEmbedder(arch="tiny-lora")
    table = lora_targets(encoder)["text_encoder"]
    block = encoder.model.transformer.resblocks[2]
    width = TINY_OPENCLIP.text_width
    for n, name in enumerate(("q_proj", "k_proj", "v_proj")):
        target = table[f"text_model.encoder.layers.2.self_attn.{name}"]
        rows = (n * width, (n + 1) * width)
        assert (target.module, target.tensor, target.rows) == (block.attn, "in_proj_weight", rows)
        assert target.weight_shape == (width, width)
    assert table["encoder.layers.2.mlp.fc1"].module is block.mlp.c_fc
    assert table["encoder.layers.2.self_attn.out_proj"].tensor == "weight"


def test_components_of_a_latent_diffusion_model_and_two_unets_refused():
    model = instantiate_from_config(tiny_latent_diffusion_config())
    found = find_lora_components(model)
    assert list(found) == ["unet"] and found["unet"][0] == "model.diffusion_model"
    with pytest.raises(LoraError, match=r"^the model holds 2 UNets \(a, b\); apply the LoRA to one of them$"):
        find_lora_components(nn.ModuleDict({"a": model.model.diffusion_model, "b": tiny_unet(SD1_LIKE)}))
