"""ldm/modules/diffusionmodules/deepcache.py: DeepCache runs the whole UNet every ``interval``
steps and only the shallow branch in between, on the deep features of the last full step."""
import pytest
import torch

from ldm.modules.diffusionmodules.deepcache import DeepCache, deep_cache
from ldm.util import instantiate_from_config
from tests.tiny_configs import TINY_CONTEXT_DIM, TINY_CONTEXT_TOKENS, tiny_unet_config


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_unet_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # no zero-initialised layer: outputs depend on every block
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _inputs(seed, batch=2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=generator)
    context = torch.randn(batch, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM, generator=generator)
    return x, context


def _sampling_calls(unet, timesteps, calls_per_step=1):
    """The UNet outputs of a run over ``timesteps`` (falling), ``calls_per_step`` inputs per step."""
    outputs = []
    with torch.no_grad():
        for index, t in enumerate(timesteps):
            for call in range(calls_per_step):
                x, context = _inputs(100 * index + call)
                outputs.append(unet(x, torch.full((2,), t), context=context))
    return outputs


def _deep_part_calls(unet):
    """Counts the middle block's calls (one per full forward)."""
    calls = []
    handle = unet.middle_block.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_interval_one_gives_the_same_outputs_as_no_cache(unet):
    timesteps = [900, 700, 500, 300, 100]
    plain = _sampling_calls(unet, timesteps, calls_per_step=2)
    with deep_cache(unet, 1) as cache:
        cached = _sampling_calls(unet, timesteps, calls_per_step=2)
    assert all(torch.equal(a, b) for a, b in zip(plain, cached))
    assert (cache.full_evaluations, cache.shallow_evaluations) == (10, 0)


def test_interval_three_runs_the_deep_part_every_third_step_only(unet):
    calls, handle = _deep_part_calls(unet)
    try:
        with deep_cache(unet, 3) as cache:
            outputs = _sampling_calls(unet, [900, 800, 700, 600, 500, 400, 300])
    finally:
        handle.remove()
    assert len(calls) == 3 == cache.full_evaluations  # steps 0, 3 and 6
    assert cache.shallow_evaluations == 4
    plain = _sampling_calls(unet, [900, 800, 700, 600, 500, 400, 300])
    assert torch.equal(outputs[0], plain[0]) and torch.equal(outputs[3], plain[3])
    assert not torch.allclose(outputs[1], plain[1])


def test_a_shallow_step_feeds_the_cached_deep_features_to_the_shallow_decoder(unet):
    first_shallow_block = unet.output_blocks[len(unet.output_blocks) - 2]  # depth 1: the last two up blocks
    inputs = []
    handle = first_shallow_block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    try:
        with deep_cache(unet, 2):
            _sampling_calls(unet, [900, 800], calls_per_step=2)
    finally:
        handle.remove()
    skip_channels = unet.input_blocks[1][0].out_channels
    deep = [tensor[:, :-skip_channels] for tensor in inputs]
    assert torch.equal(deep[2], deep[0]) and torch.equal(deep[3], deep[1])  # each call slot its own features
    assert not torch.equal(deep[0], deep[1])
    assert not torch.equal(inputs[2], inputs[0])  # the skip from the first down block is recomputed


def test_a_rising_timestep_starts_a_new_run_with_a_full_forward(unet):
    calls, handle = _deep_part_calls(unet)
    try:
        with deep_cache(unet, 5):
            _sampling_calls(unet, [900, 500])
            _sampling_calls(unet, [900, 500])
    finally:
        handle.remove()
    assert len(calls) == 2


def test_the_cache_is_removed_after_the_block_and_checks_its_interval(unet):
    with deep_cache(unet, 2):
        assert isinstance(unet.feature_cache, DeepCache)
    assert unet.feature_cache is None
    with deep_cache(unet, None) as cache:
        assert cache is None and unet.feature_cache is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="cache interval must be a positive whole number"):
            DeepCache(bad)
