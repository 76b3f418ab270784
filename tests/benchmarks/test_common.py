"""Tests of benchmarks/common.py: the diffusers twins share our weight tensors and compute the same
outputs (tiny models), the alternating timer interleaves fairly, and the peak-RSS reset works."""
import diffusers  # noqa: F401  (the twins are diffusers models; a missing install fails here, not skips)
import torch
from omegaconf import OmegaConf

from benchmarks import common
from ldm.util import instantiate_from_config

UNET_PARAMS = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
                   num_res_blocks=1, channel_mult=[1, 2, 2], num_heads=2, use_spatial_transformer=True,
                   transformer_depth=1, context_dim=32, legacy=False)
DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def _full_config() -> OmegaConf:
    """The parts of an LDM config that diffusers' converters read, at toy size."""
    return OmegaConf.create({"model": {"params": {
        "scale_factor": 0.18215,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": UNET_PARAMS},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                               "params": {"embed_dim": 4, "ddconfig": DDCONFIG,
                                          "lossconfig": {"target": "torch.nn.Identity"}}}}}})


def _shares_every_tensor(ours: torch.nn.Module, twin: torch.nn.Module) -> bool:
    ours_pointers = {t.data_ptr() for t in ours.state_dict().values()}
    return all(p.data_ptr() in ours_pointers for p in twin.parameters())


def test_diffusers_unet_twin_shares_weights_and_gives_the_same_output():
    config = _full_config()
    torch.manual_seed(0)
    unet = instantiate_from_config(config.model.params.unet_config).eval()
    common.perturb_zero_parameters(unet, std=0.1)
    twin = common.diffusers_unet(unet, config, image_size=16)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32)
    with torch.no_grad():
        ours, theirs = unet(x, t, context=context), twin(x, t, encoder_hidden_states=context).sample
    assert _shares_every_tensor(unet, twin)
    assert ours.abs().mean() > 0.01
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_diffusers_vae_twin_decodes_like_ours():
    config = _full_config()
    torch.manual_seed(0)
    vae = instantiate_from_config(config.model.params.first_stage_config).eval()
    twin = common.diffusers_vae(vae, config)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), twin.decode(z).sample, rtol=1e-5, atol=2e-5)


def test_diffusers_text_encoder_twin_encodes_like_ours():
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.modules.encoders.clip_text import with_original_layout

    torch.manual_seed(0)
    text_config = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=16)
    holder = torch.nn.Module()
    holder.transformer = with_original_layout(CLIPTextModel(text_config)).eval()
    twin = common.diffusers_text_encoder(holder)
    tokens = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        ours = holder.transformer(input_ids=tokens).last_hidden_state
        theirs = twin(tokens)[0]
    assert _shares_every_tensor(holder.transformer, twin)
    torch.testing.assert_close(ours, theirs)


def test_alternate_interleaves_and_reverses_the_order_every_other_repetition():
    calls = []
    fns = {"ours": lambda: calls.append("ours"), "theirs": lambda: calls.append("theirs")}
    times = common.alternate(fns, repeats=3, device=torch.device("cpu"))
    assert calls == ["ours", "theirs", "theirs", "ours", "ours", "theirs"]
    assert [len(times["ours"]), len(times["theirs"])] == [3, 3]


def test_median_times_takes_wall_and_cpu_medians_separately():
    assert common.median_times([(3.0, 1.0), (1.0, 5.0), (2.0, 3.0)]) == (2.0, 3.0)


def test_peak_rss_reset_forgets_an_earlier_peak():
    block = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
    del block
    if not common.reset_peak_rss():
        pytest.fail("/proc/self/clear_refs is not writable here; the memory figures need it")
    assert common.peak_rss_bytes() < common.current_rss_bytes() + 32 * 2 ** 20
