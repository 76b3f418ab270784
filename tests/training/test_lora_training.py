"""LoRA training through main.py's run (``model.params.lora_config``): a tiny text-to-image LDM with a
CLIP text encoder trains 3 steps; only the LoRA layers change, the kohya file it writes loads
with ``apply_lora`` and reproduces the trained model, and at weight 0 the model is the base."""
import os

import pytest
import torch

from ldm.modules.lora import apply_lora, read_lora_file
from ldm.training.run import run
from tests.training.test_train_models import _common, _record
from tests.training.train_helpers import make_image_folder, make_tiny_clip, tiny_txt2img_args

LORA = "model.params.lora_config"


def _trained_looking_base(config_path, folder) -> str:
    """A base checkpoint of the tiny model whose zero-initialised layers (the UNet's output
    convolution, each transformer's proj_out) are random, as in a trained model: through zero
    layers no gradient would reach the LoRA layers."""
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config, save_checkpoint

    torch.manual_seed(0)
    model = instantiate_from_config(OmegaConf.load(config_path).model)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.05)
    path = str(folder / "base.safetensors")
    save_checkpoint(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step LoRA run (UNet attention + CLIP text encoder, rank 4, alpha 2, EMA on, saved at step 2)."""
    tmp_path = tmp_path_factory.mktemp("lora_run")
    images = make_image_folder(tmp_path / "images", count=4, size=16)
    clip = make_tiny_clip(tmp_path / "clip")
    record, record_args = _record(tmp_path)
    base_args = tiny_txt2img_args(clip)
    base = _trained_looking_base(base_args[1], tmp_path)
    args = base_args + [f"model.params.ckpt_path={base}"] + _common(tmp_path, images, max_steps=3) + record_args + [
        "-n", "style", "--scale_lr", "false", "model.base_learning_rate=1e-2", "model.params.scale_by_std=false",
        "model.params.scheduler_config=null", "lightning.callbacks.image_logger.params.disabled=true",
        f"{LORA}.rank=4", f"{LORA}.alpha=2", f"{LORA}.targets=[attn,text]", f"{LORA}.save_every=2"]
    result = run(args)
    return result, torch.load(record, weights_only=True)["state_dict"]


def _context_and_input(model):
    torch.manual_seed(1)
    c = model.get_learned_conditioning(["a red circle", "a blue square"])
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 700])
    return x, t, c


@torch.no_grad()
def _outputs(model):
    x, t, c = _context_and_input(model)
    return model.apply_model(x, t, c)


def test_only_the_lora_layers_train_and_the_base_stays_bit_identical(trained):
    result, start = trained
    after = result.model.state_dict()
    lora_keys = [k for k in after if k.startswith("lora_layers.")]
    assert lora_keys and all(k in start for k in lora_keys)
    assert all(not torch.equal(start[k], after[k]) for k in lora_keys if k.endswith(".up"))
    base_keys = [k for k in after if not k.startswith(("lora_layers.", "model_ema."))]
    assert any(k.startswith("cond_stage_model.transformer.") for k in base_keys)
    assert all(torch.equal(start[k], after[k]) for k in base_keys)
    assert all(not p.requires_grad for n, p in result.model.named_parameters() if not n.startswith("lora_layers."))
    # the EMA follows the LoRA layers only, not the frozen base
    ema_buffers = [n for n, _ in result.model.model_ema.named_buffers() if n not in ("decay", "num_updates")]
    assert len(ema_buffers) == len(lora_keys) and result.model.model_ema.num_updates.item() == 3
    optimizer_params = result.trainer.optimizers[0].param_groups[0]["params"]
    assert {id(p) for p in optimizer_params} == {id(p) for p in result.model.lora_layers.parameters()}


def test_the_kohya_file_is_written_and_reproduces_the_trained_model(trained):
    result, _ = trained
    model = result.model
    folder = os.path.join(result.paths.logdir, "lora")
    assert sorted(os.listdir(folder)) == ["style-step000002.safetensors", "style.safetensors"]
    lora = read_lora_file(os.path.join(folder, "style.safetensors"))
    assert any(k.startswith("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.")
               for k in lora.state_dict)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in lora.state_dict)
    assert lora.metadata["ss_network_dim"] == "4" and lora.metadata["ss_network_alpha"] == "2.0"
    assert lora.metadata["ss_steps"] == "3" and lora.metadata["ldm_ema"] == "True"
    assert lora.metadata["ss_network_module"] == "networks.lora"
    model.eval()
    with model.ema_scope():  # the file holds the EMA weights (the run keeps an EMA)
        trained_out = _outputs(model)
    assert not torch.equal(trained_out, _outputs(model))
    model.lora_layers.remove()
    base_out = _outputs(model)
    assert not torch.allclose(trained_out, base_out, atol=1e-4)
    handle = apply_lora(model, os.path.join(folder, "style.safetensors"), verbose=False)
    assert handle.counts == {"unet": len([k for k in lora.state_dict if k.startswith("lora_unet_")]) // 3,
                             "text_encoder": 4} and not handle.unused_keys
    torch.testing.assert_close(_outputs(model), trained_out, atol=1e-5, rtol=1e-5)
    handle.weight = 0.0
    assert torch.equal(_outputs(model), base_out)
    handle.remove()
    assert torch.equal(_outputs(model), base_out)


def test_lora_config_is_checked(tmp_path):
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config
    from tests.tiny_configs import tiny_latent_diffusion_config

    def build(**lora):
        return instantiate_from_config(tiny_latent_diffusion_config(lora_config=OmegaConf.create(lora)))

    with pytest.raises(ValueError, match="unknown keys"):
        build(rank=4, dropout=0.1)
    with pytest.raises(ValueError, match="targets must be"):
        build(targets=["attn", "mlp"])
    with pytest.raises(ValueError, match="cond_stage_trainable"):
        build(targets=["text"])
    model = build(rank=2, targets=["attn", "proj"])
    from ldm.modules.attention import SpatialTransformer

    names = list(model.lora_layers.pairs)
    transformers = sum(isinstance(m, SpatialTransformer) for m in model.modules())
    assert transformers and len(names) == 10 * transformers  # q, k, v, out of attn1 and attn2; proj_in, proj_out
    assert all(n.startswith("lora_unet_") for n in names)
    assert model.trainable_parameters() == list(model.lora_layers.parameters())
    plain = instantiate_from_config(tiny_latent_diffusion_config())
    assert plain.lora_layers is None and len(plain.trainable_parameters()) == len(list(plain.model.parameters()))
