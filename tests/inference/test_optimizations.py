import argparse

import pytest
import torch

from ldm.inference.errors import UsageError
from ldm.inference.optimizations import apply_runtime_options
from ldm.modules.attention import get_attention_slicing, set_attention_slicing
from ldm.util import instantiate_from_config
from tests.tiny_configs import tiny_latent_diffusion_config


@pytest.fixture()
def model():
    return instantiate_from_config(tiny_latent_diffusion_config())


def _options(**flags):
    values = dict(attention_slicing=None, vae_tiling=False, compile=False)
    values.update(flags)
    return argparse.Namespace(**values)


def test_slicing_and_tiling_are_switched_on_when_asked(model):
    apply_runtime_options(model, _options(attention_slicing=8, vae_tiling=True))
    assert get_attention_slicing(model) == 8
    assert model.first_stage_model.tiling


def test_without_flags_slicing_is_off_even_after_an_earlier_run(model):
    set_attention_slicing(model, 16)
    apply_runtime_options(model, _options())
    assert get_attention_slicing(model) is None
    assert not model.first_stage_model.tiling


def test_compile_wraps_the_unet_only_and_freezes_its_weights_on_cpu_for_this_compilation_only(model):
    import torch._inductor.config as inductor_config

    unet = model.model.diffusion_model
    apply_runtime_options(model, _options(compile=True))
    assert model.model.diffusion_model is not unet
    assert model.model.diffusion_model._orig_mod is unet
    assert model.model.diffusion_model.get_compiler_config()["freezing"] is True
    assert inductor_config.freezing is False  # the process-wide setting is untouched


def test_tiling_an_autoencoder_that_cannot_is_an_error(model):
    model.first_stage_model = torch.nn.Identity()
    with pytest.raises(UsageError, match="--vae-tiling"):
        apply_runtime_options(model, _options(vae_tiling=True))
