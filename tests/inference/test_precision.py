import dataclasses

import pytest
import torch

from ldm.inference import precision
from ldm.inference.api import prepare_run
from ldm.inference.errors import UsageError
from ldm.inference.pipeline import decode_latents
from ldm.inference.precision import (
    autocast_dtype,
    autocast_weight_retyper,
    cpu_has_native_bf16,
    float32_scope,
    precision_scope,
)

CPU = torch.device("cpu")


def test_the_environment_override_decides_native_bf16(monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    assert cpu_has_native_bf16() is True
    monkeypatch.setenv("LDM_CPU_BF16", "0")
    assert cpu_has_native_bf16() is False
    monkeypatch.setenv("LDM_CPU_BF16", "yes")
    with pytest.raises(UsageError, match="LDM_CPU_BF16 must be 0 or 1"):
        cpu_has_native_bf16()


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16 avx2", True),
                                             ("fpu amx_tile amx_bf16", True),
                                             ("fpu sse avx512f avx512_vnni", False)])
def test_native_bf16_is_read_from_the_cpuinfo_flags(tmp_path, monkeypatch, flags, expected):
    monkeypatch.delenv("LDM_CPU_BF16", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert precision._cpuinfo_has_native_bf16.__wrapped__(str(info)) is expected


def test_without_cpuinfo_there_is_no_native_bf16(tmp_path):
    assert precision._cpuinfo_has_native_bf16.__wrapped__(str(tmp_path / "missing")) is False


def test_cpu_autocast_is_bf16_with_native_bf16_and_fp32_without(monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    assert autocast_dtype(CPU, "autocast", bf16=False) is torch.bfloat16
    assert autocast_dtype(CPU, "full", bf16=False) is None
    monkeypatch.setenv("LDM_CPU_BF16", "0")
    assert autocast_dtype(CPU, "autocast", bf16=False) is None
    assert autocast_dtype(CPU, "autocast", bf16=True) is torch.bfloat16


def test_full_precision_is_fp32_and_refuses_bf16():
    assert autocast_dtype(CPU, "full", bf16=False) is None
    with pytest.raises(UsageError, match="--bf16 needs --precision autocast"):
        autocast_dtype(CPU, "full", bf16=True)


def test_bf16_scope_runs_matmuls_in_bf16_on_cpu():
    with precision_scope(CPU, torch.bfloat16):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
        with float32_scope(CPU):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert out.dtype == torch.bfloat16
    with precision_scope(CPU, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


class _RecordingDecoder(torch.nn.Module):
    """A first stage that records the autocast state and input dtype of its decode."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 1)
        self.seen = None

    def decode_first_stage(self, z):
        self.seen = (torch.is_autocast_enabled("cpu"), z.dtype)
        return self.conv(z)


def test_the_vae_decodes_in_float32_under_bf16_autocast_on_cpu():
    model = _RecordingDecoder()
    with precision_scope(CPU, torch.bfloat16):
        z = model.conv.weight.new_ones(1, 4, 2, 2).to(torch.bfloat16)
        images = decode_latents(model, z)
    assert model.seen == (False, torch.float32)
    assert images.dtype == torch.float32


def _unet_autocast_states(pipe):
    """The (autocast enabled, autocast dtype) the UNet runs under in one call of ``pipe``."""
    seen = []
    unet = pipe.model.model.diffusion_model
    handle = unet.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    try:
        pipe("a red circle", steps=2, n=1)
    finally:
        handle.remove()
    return set(seen)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("native, expected", [("1", {(True, torch.bfloat16)}), ("0", None)])
def test_the_unet_samples_under_bf16_autocast_on_cpu_only_with_native_bf16(tiny_models, monkeypatch, native,
                                                                            expected):
    monkeypatch.setenv("LDM_CPU_BF16", native)
    model = tiny_models["txt2img"]
    pipe = model.load()
    assert pipe.dtype is (torch.bfloat16 if native == "1" else None)
    states = _unet_autocast_states(pipe)
    if expected is not None:
        assert states == expected
    else:
        assert {enabled for enabled, _ in states} == {False}


def _loaded(model, precision="autocast"):
    return model.load(precision=precision)


def _pixels(pipe):
    """The float images of one guided two-step call of ``pipe`` (decoded in float32)."""
    run = prepare_run("txt2img", pipe.options("a red circle", steps=2, n=2, seed=3, scale=5.0), pipe.spec)
    return torch.cat([pixels for _, pixels, _ in pipe.generate(run)])


def _weights_of(pipe):
    unet, text, vae = pipe.model.model.diffusion_model, pipe.model.cond_stage_model, pipe.model.first_stage_model
    return unet, text, vae


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bf16_weights_give_exactly_the_images_of_bf16_autocast_over_float32_weights(tiny_models, monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    model = tiny_models["txt2img"]
    ours = _loaded(model)
    assert ours.weights_dtype is torch.bfloat16
    autocast_over_float32 = dataclasses.replace(_loaded(model, "full"), dtype=torch.bfloat16)  # before issue 24
    assert {p.dtype for p in autocast_over_float32.model.parameters()} == {torch.float32}
    images = _pixels(ours)
    assert images.dtype == torch.float32
    assert torch.equal(images, _pixels(autocast_over_float32))
    assert not torch.equal(images, _pixels(_loaded(model, "full"))), "bf16 autocast should differ from float32"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_only_the_unet_and_text_encoder_linear_and_conv_weights_are_stored_in_bf16(tiny_models, monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    unet, text, vae = _weights_of(_loaded(tiny_models["txt2img"]))
    for part in (unet, text):
        layers = [m for m in part.modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)]
        assert layers and {p.dtype for m in layers for p in m.parameters()} == {torch.bfloat16}
        others = [p for m in part.modules() if type(m) not in (torch.nn.Linear, torch.nn.Conv2d)
                  for p in m.parameters(recurse=False)]
        assert others and {p.dtype for p in others} == {torch.float32}, "norms and embeddings stay float32"
    assert isinstance(unet.out[0], torch.nn.GroupNorm) and unet.out[0].weight.dtype == torch.float32
    assert text.transformer.text_model.embeddings.token_embedding.weight.dtype == torch.float32
    assert {p.dtype for p in vae.parameters()} == {torch.float32}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("native, precision", [("1", "full"), ("0", "autocast")])
def test_float32_runs_keep_float32_weights(tiny_models, monkeypatch, native, precision):
    monkeypatch.setenv("LDM_CPU_BF16", native)
    pipe = _loaded(tiny_models["txt2img"], precision)
    assert pipe.dtype is None and pipe.weights_dtype is None
    assert {p.dtype for p in pipe.model.parameters()} == {torch.float32}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_pipeline_loaded_for_bf16_refuses_to_sample_in_float32(tiny_models, monkeypatch):
    monkeypatch.setenv("LDM_CPU_BF16", "1")
    pipe = _loaded(tiny_models["txt2img"])
    with pytest.raises(TypeError, match="set it in ldm.load"):
        pipe("a red circle", precision="full")
    with pytest.raises(UsageError, match=r"loaded for bfloat16 autocast .* cannot run in float32: load it again "
                                         r"with precision='full'"):
        dataclasses.replace(pipe, dtype=None)("a red circle", steps=1)


def test_the_weights_are_stored_in_bf16_only_for_bf16_autocast_on_a_cpu():
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.diffusion_model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    model.first_stage_model = torch.nn.Conv2d(2, 2, 1)
    assert autocast_weight_retyper(CPU, None) is None
    assert autocast_weight_retyper(torch.device("cuda"), torch.bfloat16) is None
    autocast_weight_retyper(CPU, torch.bfloat16)(model)
    assert [p.dtype for p in model.parameters()] == [torch.bfloat16] * 2 + [torch.float32] * 4
