"""ldm/modules/lora/training.py: trainable LoRA layers saved as kohya-ss files give, loaded by
diffusers' ``load_lora_weights`` (and by our ``apply_lora``), the outputs of the model they were
trained on; a fresh LoRA changes nothing and ``remove()`` gives the base model back."""
import pytest
import torch
import torch.nn as nn

from ldm.modules.lora import apply_lora, read_lora_file
from ldm.modules.lora.training import TrainableLora
from tests.modules.lora.lora_fixtures import SD1_LIKE, SD2_LIKE
from tests.modules.lora.test_apply import TOLERANCE, Pair, clip_dir  # noqa: F401  (clip_dir: a fixture)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _holder(pair) -> nn.Module:
    """A model holding the pair's UNet and CLIP text encoder, as a LatentDiffusion does."""
    holder = nn.Module()
    holder.model, holder.cond_stage_model = pair.unet, pair.encoder
    return holder


def _randomize(lora: TrainableLora, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pair in lora.pairs.values():
            pair.up.copy_(0.2 * torch.randn(pair.up.shape, generator=generator))


@pytest.mark.parametrize("params", [SD1_LIKE, SD2_LIKE], ids=["sd1-like", "sd2-like"])
def test_a_saved_lora_loads_in_diffusers_and_apply_lora_with_the_trained_outputs(params, clip_dir, tmp_path):  # noqa: F811
    pair = Pair(params, clip_dir)
    before = pair.outputs()[0][0]
    lora = TrainableLora(_holder(pair), rank=3, alpha=1.5, targets=["attn", "proj", "ff", "conv", "emb", "text"])
    assert torch.equal(pair.outputs()[0][0], before)  # up starts at zero: nothing changes
    _randomize(lora)
    trained = pair.outputs()[0]
    assert (trained[0] - before).abs().max() > 0.1
    path = str(tmp_path / "trained.safetensors")
    lora.save(path)
    file = read_lora_file(path)
    assert file.metadata["ss_network_dim"] == "3" and file.metadata["ss_network_alpha"] == "1.5"
    assert any(".attn1.to_q" not in k and k.startswith("lora_unet_") and "_proj_in." in k for k in file.state_dict)
    assert any(k.startswith("lora_unet_") and "_resnets_0_conv1." in k for k in file.state_dict)
    assert any(k.startswith("lora_unet_") and "_resnets_0_time_emb_proj." in k for k in file.state_dict)
    lora.remove()
    assert torch.equal(pair.outputs()[0][0], before)
    pair.pipe.load_lora_weights(path, adapter_name="trained")
    handle = apply_lora(_holder(pair), path, verbose=False)
    (ours_unet, ours_text), (their_unet, their_text) = pair.outputs()
    assert len(handle.layers) == len(lora.pairs) and not handle.unused_keys
    torch.testing.assert_close(ours_unet, trained[0], **TOLERANCE)
    torch.testing.assert_close(ours_text, trained[1], **TOLERANCE)
    torch.testing.assert_close(their_unet, trained[0], **TOLERANCE)
    torch.testing.assert_close(their_text, trained[1], **TOLERANCE)


def test_targets_and_rank_are_checked():
    from tests.modules.lora.lora_fixtures import tiny_unet

    holder = nn.Module()
    holder.model = tiny_unet(SD1_LIKE)
    with pytest.raises(ValueError, match="need a CLIP text encoder"):
        TrainableLora(holder, targets=["attn", "text"])
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        TrainableLora(holder, rank=0)
    with pytest.raises(ValueError, match="targets must be a non-empty list"):
        TrainableLora(holder, targets=[])
    with pytest.raises(ValueError, match="needs a model with a UNetModel"):
        TrainableLora(nn.Linear(2, 2))
    lora = TrainableLora(holder, rank=2)
    assert all(name.startswith("lora_unet_") and ("attn1_to_" in name or "attn2_to_" in name) for name in lora.pairs)
    with pytest.raises(ValueError, match="written as .safetensors"):
        lora.save("lora.pt")
