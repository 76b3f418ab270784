"""The renaming of DPT state dicts to transformers' DPTForDepthEstimation: every transformers
tensor filled exactly once with the right shape, the fused qkv split in query, key, value order."""
import pytest
import torch
from transformers import DPTForDepthEstimation

from ldm.modules.midas.midas.dpt_depth import DPTDepthModel
from ldm.modules.midas.transformers_dpt import to_transformers_dpt, transformers_dpt_config
from tests.modules.midas.tiny import TINY_HYBRID, TINY_VIT


@pytest.mark.parametrize("backbone,options", [("vitb_rn50_384", TINY_HYBRID), ("vitl16_384", TINY_VIT)])
def test_renaming_fills_every_transformers_tensor_once(backbone, options):
    ours = DPTDepthModel(backbone=backbone, **options)
    theirs = DPTForDepthEstimation(transformers_dpt_config(ours))
    renamed = to_transformers_dpt(ours.state_dict(), hybrid=backbone == "vitb_rn50_384")
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in renamed.items()} == expected
    # all of ours is used but the ViT's ImageNet head; qkv became three tensors
    n_qkv = 2 * options["backbone_options"]["depth"]
    assert len(renamed) == len(ours.state_dict()) - 2 + 2 * n_qkv


def test_qkv_is_split_into_query_key_value_in_that_order():
    ours = DPTDepthModel(**TINY_HYBRID)
    state = ours.state_dict()
    renamed = to_transformers_dpt(state, hybrid=True)
    qkv = state["pretrained.model.blocks.1.attn.qkv.weight"]
    prefix = "dpt.encoder.layer.1.attention.attention"
    torch.testing.assert_close(torch.cat([renamed[f"{prefix}.{n}.weight"] for n in ("query", "key", "value")]), qkv)


def test_real_dpt_hybrid_names_map_to_transformers_names():
    with torch.device("meta"):
        ours = DPTDepthModel(backbone="vitb_rn50_384")
    renamed = to_transformers_dpt(ours.state_dict(), hybrid=True)
    assert "dpt.embeddings.backbone.bit.encoder.stages.2.layers.8.conv3.weight" in renamed
    assert renamed["neck.reassemble_stage.layers.3.resize.weight"].shape == (768, 768, 3, 3)
    assert renamed["neck.fusion_stage.layers.0.residual_layer2.convolution1.bias"].shape == (256,)


def test_unknown_keys_are_refused():
    with pytest.raises(KeyError, match="no transformers name for DPT key scratch.extra.weight"):
        to_transformers_dpt({"scratch.extra.weight": torch.zeros(1)}, hybrid=True)
