"""ldm/modules/token_merging.py: token merging (ToMe for Stable Diffusion) merges the most similar
tokens into one destination per 2x2 window before the self-attention of the top-level transformer
blocks, and puts the attention's output back in every token's place."""
import pytest
import torch

from ldm.modules.token_merging import (
    TokenMerging,
    bipartite_soft_matching_2d,
    destination_tokens,
    token_merging,
)
from ldm.util import instantiate_from_config
from tests.tiny_configs import TINY_CONTEXT_DIM, TINY_CONTEXT_TOKENS, tiny_unet_config


@pytest.fixture(scope="module")
def unet():
    """The tiny UNet with transformers at the latent's resolution (8x8 tokens) and at 4x4."""
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_unet_config(attention_resolutions=[1, 2])).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # no zero-initialised layer: outputs depend on every block
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _inputs(seed=0, batch=2, size=8):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    context = torch.randn(batch, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM, generator=generator)
    return x, torch.full((batch,), 500), context


def _forward(unet, x, t, context):
    with torch.no_grad():
        return unet(x, t, context=context)


def test_each_whole_window_has_one_destination_and_the_leftover_rows_none():
    mask = destination_tokens(5, 6, generator=torch.Generator().manual_seed(3)).view(5, 6)
    windows = mask[:4].reshape(2, 2, 3, 2).sum(dim=(1, 3))
    assert torch.equal(windows, torch.ones(2, 3, dtype=torch.long))
    assert not mask[4].any()
    top_left = destination_tokens(4, 4).view(4, 4)
    assert top_left[::2, ::2].all() and top_left.sum() == 4


def test_merge_leaves_n_minus_r_tokens_and_unmerge_restores_the_shape():
    metric = torch.randn(3, 64, 16)
    matching = bipartite_soft_matching_2d(metric, 8, 8, r=20, generator=torch.Generator().manual_seed(0))
    merged = matching.merge(metric)
    assert merged.shape == (3, 44, 16)
    assert matching.unmerge(merged).shape == (3, 64, 16)
    assert matching.merged.shape == (3, 20) and matching.kept.shape == (3, 28)  # 48 sources, 16 destinations


def test_r_is_capped_at_the_number_of_sources():
    matching = bipartite_soft_matching_2d(torch.randn(1, 16, 8), 4, 4, r=15)
    assert matching.merge(torch.randn(1, 16, 8)).shape == (1, 4, 8)


def test_unmerge_of_merge_is_exact_when_sources_duplicate_their_destinations():
    generator = torch.Generator().manual_seed(1)
    window_values = torch.randint(-8, 9, (2, 4, 4, 8), generator=generator).float()  # one vector per 2x2 window
    grid = window_values.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    tokens = grid.reshape(2, 64, 8)
    matching = bipartite_soft_matching_2d(tokens, 8, 8, r=32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(matching.unmerge(matching.merge(tokens)), tokens)


def test_merged_destination_is_the_plain_mean_of_it_and_its_sources():
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0]]])  # a 1x4 grid: windows 2x1
    matching = bipartite_soft_matching_2d(tokens, 1, 4, r=2, stride=(2, 1))
    merged = matching.merge(tokens)
    assert torch.allclose(merged, torch.tensor([[[1.0, 0.1], [0.05, 1.0]]]))
    assert torch.equal(matching.unmerge(merged), merged[:, [0, 0, 1, 1]])


def test_ratio_zero_is_bitwise_the_plain_unet(unet):
    inputs = _inputs()
    plain = _forward(unet, *inputs)
    with token_merging(unet, 0.0):
        merged = _forward(unet, *inputs)
    assert torch.equal(plain, merged)


def _attn1_token_counts(unet, ratio, size=8):
    counts = []
    hooks = [module.attn1.register_forward_pre_hook(lambda module, args: counts.append(args[0].shape[1]))
             for module in unet.modules() if hasattr(module, "attn1")]
    try:
        with token_merging(unet, ratio):
            _forward(unet, *_inputs(size=size))
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def test_attn1_sees_r_fewer_tokens_at_the_top_level_only(unet):
    plain = _attn1_token_counts(unet, None)
    merged = _attn1_token_counts(unet, 0.5)
    assert sorted(set(plain)) == [16, 64]  # 8x8 (top), 4x4 (second level and middle)
    assert merged == [32 if n == 64 else n for n in plain]
    assert plain.count(64) == 3  # one input block, two output blocks at the top level


def test_a_block_is_merged_down_to_max_downsample_below_the_latent():
    merging = TokenMerging(0.5, max_downsample=2)
    assert merging.grid(64 * 48) is None  # before the UNet's first call
    merging.latent_size = (64, 48)
    assert merging.grid(64 * 48) == (64, 48) and merging.grid(32 * 24) == (32, 24)
    assert merging.grid(16 * 12) is None


def test_the_same_seed_gives_the_same_output_and_leaves_the_global_rng_alone(unet):
    inputs = _inputs()
    state = torch.get_rng_state()
    with token_merging(unet, 0.5, seed=4):
        first = [_forward(unet, *inputs) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    with token_merging(unet, 0.5, seed=4):
        again = [_forward(unet, *inputs) for _ in range(2)]
    with token_merging(unet, 0.5, seed=5):
        other = _forward(unet, *inputs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # new random destinations at each call
    assert not torch.equal(first[0], other)
    assert not torch.equal(first[0], _forward(unet, *inputs))


def test_top_left_destinations_need_no_generator_and_change_nothing_between_calls(unet):
    inputs = _inputs()
    with token_merging(unet, 0.5, random_destinations=False) as merging:
        assert merging.generator is None
        outputs = [_forward(unet, *inputs) for _ in range(2)]
    assert torch.equal(outputs[0], outputs[1])


def test_merging_is_removed_after_the_block_and_checks_its_ratio(unet):
    with token_merging(unet, 0.3) as merging:
        assert all(block.token_merging is merging for block in unet.modules() if hasattr(block, "attn1"))
    assert all(block.token_merging is None for block in unet.modules() if hasattr(block, "attn1"))
    assert not unet._forward_pre_hooks
    with token_merging(unet, None) as merging:
        assert merging is None
    state_keys = set(unet.state_dict())
    with token_merging(unet, 0.5):
        assert set(unet.state_dict()) == state_keys
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="token merging ratio must be a number in"):
            TokenMerging(bad)


def test_bf16_autocast_merges_and_stays_close_to_the_plain_unet(unet):
    inputs = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _forward(unet, *inputs)
        with token_merging(unet, 0.5):
            merged = _forward(unet, *inputs)
    assert merged.dtype == plain.dtype and torch.isfinite(merged).all()
    assert not torch.equal(plain, merged)
    assert (merged - plain).norm() < 0.5 * plain.norm()
