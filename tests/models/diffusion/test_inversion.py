"""DDIM inversion for editing: the plan of ``keep``, the trajectory, and reconstruction (invert then
regenerate with the same conditioning at guidance 1) on the analytic Gaussian model and on a tiny
random-weight v-model."""
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.inversion import (
    EditPlan,
    blend_levels,
    check_diffedit,
    ddim_invert,
    diffedit_mask,
    difference_map,
    dilate_mask,
    edit_latent,
    plan_edit,
    regenerate,
)
from ldm.util import instantiate_from_config
from tests.models.diffusion.gaussian_analytic import GaussianDataModel, relative_error
from tests.tiny_configs import TINY_CONTEXT_DIM, TINY_CONTEXT_TOKENS, tiny_latent_diffusion_config

SHAPE = (4, 8, 8)


def test_plan_keep_counts_steps_from_the_top_of_the_regeneration_grid():
    assert plan_edit(0.0, 50, 50, 1000) == EditPlan(50, 50, 50, 50)
    assert plan_edit(0.4, 50, 50, 1000) == EditPlan(50, 50, 30, 30)
    assert plan_edit(1.0, 50, 50, 1000) == EditPlan(50, 50, 0, 0)
    # 25 regeneration steps on a 50-step inversion: level 15 of 25 is timestep 561 = level 29 of 50
    assert plan_edit(0.4, 25, 50, 1000) == EditPlan(25, 50, 15, 29)


@pytest.mark.parametrize("keep, steps, inversion_steps, message", [
    (1.5, 50, 50, r"--keep must be in \[0, 1\], got 1.5"),
    (-0.1, 50, 50, r"--keep must be in \[0, 1\]"),
    (0.0, 50, 20, r"starts at timestep 981 .* 20-step inversion does not reach"),
])
def test_plan_refuses_keep_outside_the_unit_interval_and_levels_off_the_inversion_grid(
        keep, steps, inversion_steps, message):
    with pytest.raises(ValueError, match=message):
        plan_edit(keep, steps, inversion_steps, 1000)


def test_trajectory_holds_every_level_and_ends_at_ddim_encode():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    x0 = torch.randn(2, *SHAPE, dtype=torch.float64)
    trajectory = ddim_invert(sampler, x0, None, 10, count=4)
    assert len(trajectory.latents) == 5 and torch.equal(trajectory.latents[0], x0)
    assert trajectory.timesteps.tolist() == [1, 101, 201, 301]
    encoded, _ = sampler.encode(x0, None, 4, verbose=False)
    assert torch.equal(trajectory.latents[-1], encoded)
    # each level is one DDIM inversion step from the previous: noisier data, variance grows toward 1
    stds = [float(latent.std()) for latent in trajectory.latents]
    assert stds == sorted(stds)


def test_keep_one_returns_the_image_latent_and_keep_zero_starts_from_the_inverted_noise():
    model = GaussianDataModel()
    sampler = DDIMSampler(model)
    x0 = torch.randn(1, *SHAPE, dtype=torch.float64)
    assert torch.equal(edit_latent(sampler, x0, None, None, plan_edit(1.0, 10, 10, 1000)), x0)
    trajectory = ddim_invert(sampler, x0, None, 10)
    full = regenerate(sampler, trajectory, plan_edit(0.0, 10, 10, 1000), None)
    assert torch.equal(full, sampler.decode(trajectory.latents[-1], None, 10, verbose=False))


def test_gaussian_reconstruction_error_falls_with_the_step_count():
    model = GaussianDataModel(data_std=0.5)
    x0 = torch.randn(2, *SHAPE, dtype=torch.float64) * 0.5
    errors = {steps: relative_error(edit_latent(DDIMSampler(model), x0, None, None, plan_edit(0.0, steps, steps, 1000)),
                                    x0) for steps in (10, 50, 200)}
    print(f"\ninversion + regeneration, N(0, 0.5^2): relative error {errors}")
    assert errors[10] > errors[50] > errors[200] and errors[50] < 0.05


@pytest.fixture(scope="module")
def tiny_v_model():
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_latent_diffusion_config(parameterization="v")).eval()
    with torch.no_grad():  # zero-initialised layers (output, attention projections) would hide the model
        for parameter in model.model.diffusion_model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return model


def test_tiny_v_model_inversion_with_the_same_prompt_at_scale_one_reconstructs_the_latent(tiny_v_model):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, *SHAPE, generator=generator)
    cond = torch.randn(2, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM, generator=generator)
    errors = {}
    for steps in (10, 50):
        for keep in (0.0, 0.5):
            edited = edit_latent(DDIMSampler(tiny_v_model), x0, cond, cond, plan_edit(keep, steps, steps, 1000))
            errors[steps, keep] = float((edited - x0).norm() / x0.norm())
    print(f"\ntiny v-model, invert + regenerate (steps, keep): relative error {errors}")
    assert errors[50, 0.0] < 0.1 and errors[50, 0.0] < errors[10, 0.0]
    assert errors[50, 0.5] <= errors[50, 0.0]
    # another prompt in the regeneration changes the result: the conditioning is used
    other = torch.randn(2, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM, generator=generator)
    edited = edit_latent(DDIMSampler(tiny_v_model), x0, cond, other, plan_edit(0.0, 50, 50, 1000))
    assert float((edited - x0).norm() / x0.norm()) > 2 * errors[50, 0.0]


def test_blend_levels_map_each_regeneration_level_to_the_inversion_level_at_its_timestep():
    assert blend_levels(plan_edit(0.4, 50, 50, 1000), 1000) == list(range(30))
    # 25 regeneration steps on 50: regeneration level j (timestep 40 (j - 1) + 1) is inversion level 2 j - 1
    assert blend_levels(plan_edit(0.4, 25, 50, 1000), 1000) == [0] + [2 * j - 1 for j in range(1, 15)]
    with pytest.raises(ValueError, match=r"masked regeneration passes timestep 21 .* 25-step inversion"):
        blend_levels(plan_edit(0.94, 50, 25, 1000), 1000)  # starts at 41, on both grids


@pytest.mark.parametrize("threshold, strength, noises, message", [
    (0.0, 0.5, 10, r"--mask-threshold must be in \(0, 1\), got 0.0"),
    (1.0, 0.5, 10, r"--mask-threshold must be in \(0, 1\), got 1.0"),
    (0.5, 0.0, 10, r"--mask-strength must be in \(0, 1\], got 0.0"),
    (0.5, 0.5, 0, r"--mask-noises must be at least 1, got 0"),
])
def test_diffedit_settings_outside_their_ranges_are_refused(threshold, strength, noises, message):
    with pytest.raises(ValueError, match=message):
        check_diffedit(threshold, strength, noises)


def two_conditionings(seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, TINY_CONTEXT_TOKENS, TINY_CONTEXT_DIM, generator=generator) for _ in range(2)]


def test_diffedit_map_is_in_the_unit_range_per_image_and_zero_for_equal_prompts(tiny_v_model):
    sampler = DDIMSampler(tiny_v_model)
    x0 = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    source, target = two_conditionings(4)
    found = difference_map(sampler, x0, source, target, noises=3, generator=torch.Generator().manual_seed(5))
    assert found.shape == (2, 1, *SHAPE[1:])
    for image in found:
        assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert torch.count_nonzero(difference_map(sampler, x0, source, source, noises=2)) == 0
    # the same generator seed gives the same map; the binary mask is the map at the threshold
    again = difference_map(sampler, x0, source, target, noises=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(found, again)
    mask = diffedit_mask(sampler, x0, source, target, threshold=0.5, noises=3,
                         generator=torch.Generator().manual_seed(5))
    assert torch.equal(mask, (found >= 0.5).float()) and 0 < float(mask.mean()) < 1


def test_masked_regeneration_keeps_the_inverted_source_latents_outside_the_mask_at_every_step(tiny_v_model):
    sampler = DDIMSampler(tiny_v_model)
    x0 = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(6))
    source, target = two_conditionings(7)
    mask = torch.zeros(2, 1, *SHAPE[1:])
    mask[:, :, 2:6, 1:5] = 1
    plan = plan_edit(0.5, 10, 20, 1000)
    trajectory = ddim_invert(sampler, x0, source, plan.inversion_steps, plan.inversion_count)
    seen = []  # the latent each step starts from: the start, then the blended latent of each level
    step = sampler.p_sample_ddim

    def recording_step(x, *args, **kwargs):
        seen.append(x.clone())
        return step(x, *args, **kwargs)

    sampler.p_sample_ddim = recording_step
    edited = regenerate(sampler, trajectory, plan, target, scale=3.0, mask=mask)
    levels = blend_levels(plan, 1000)
    reached = seen[1:] + [edited]  # after the step at index j: level j
    assert len(reached) == plan.regeneration_steps == 5
    outside = mask.expand_as(x0) == 0
    for index, latent in zip(reversed(range(plan.regeneration_steps)), reached):
        assert torch.equal(latent[outside], trajectory.latents[levels[index]][outside])
    assert torch.equal(edited[outside], x0[outside])
    # inside the mask the target prompt edits; without a mask the whole latent differs from the image
    assert not torch.allclose(edited[~outside], x0[~outside], atol=1e-3)
    sampler.p_sample_ddim = step
    unmasked = regenerate(sampler, trajectory, plan, target, scale=3.0)
    assert not torch.allclose(unmasked[outside], x0[outside], atol=1e-3)
    # an all-ones mask is the unmasked regeneration
    assert torch.allclose(regenerate(sampler, trajectory, plan, target, scale=3.0, mask=torch.ones_like(mask)),
                          unmasked)


def test_dilation_grows_the_mask_by_whole_latent_pixels_and_refuses_negative_sizes():
    mask = torch.zeros(1, 1, 8, 8)
    mask[:, :, 3:5, 3:5] = 1
    grown = dilate_mask(mask, 1)
    expected = torch.zeros_like(mask)
    expected[:, :, 2:6, 2:6] = 1
    assert torch.equal(grown, expected) and torch.equal(dilate_mask(mask, 0), mask)
    assert float(dilate_mask(mask, 2).sum()) == 36.0
    with pytest.raises(ValueError, match=r"--mask-dilate must be 0 or more, got -1"):
        dilate_mask(mask, -1)


def test_fresh_noise_fill_changes_only_the_inside_of_the_mask_and_depends_on_the_noise(tiny_v_model):
    sampler = DDIMSampler(tiny_v_model)
    x0 = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(8))
    source, target = two_conditionings(9)
    mask = torch.zeros(2, 1, *SHAPE[1:])
    mask[:, :, 1:5, 2:7] = 1
    plan = plan_edit(0.5, 10, 10, 1000)
    trajectory = ddim_invert(sampler, x0, source, plan.inversion_steps, plan.inversion_count)
    noises = [torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(seed)) for seed in (10, 11)]
    filled = [regenerate(sampler, trajectory, plan, target, scale=3.0, mask=mask, fill_noise=noise)
              for noise in noises]
    inverted = regenerate(sampler, trajectory, plan, target, scale=3.0, mask=mask)
    outside = mask.expand_as(x0) == 0
    for edited in filled:
        assert torch.equal(edited[outside], x0[outside])
        assert not torch.allclose(edited[~outside], inverted[~outside], atol=1e-3)
    assert not torch.allclose(filled[0][~outside], filled[1][~outside], atol=1e-3)
    # the start inside the mask is the image latent noised to the start level: with that noise as the
    # inverted latent itself the fill is the inverted start
    t = torch.full((2,), int(sampler.ddim_timesteps[plan.regeneration_steps - 1]), dtype=torch.long)
    alpha = tiny_v_model.alphas_cumprod[t[0]]
    as_noise = (trajectory.latents[plan.inversion_count] - alpha.sqrt() * x0) / (1 - alpha).sqrt()
    assert torch.allclose(regenerate(sampler, trajectory, plan, target, scale=3.0, mask=mask, fill_noise=as_noise),
                          inverted, atol=1e-4)
