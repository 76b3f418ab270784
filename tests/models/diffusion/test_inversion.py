"""DDIM inversion for editing: the plan of ``keep``, the trajectory, and reconstruction (invert then
regenerate with the same conditioning at guidance 1) on the analytic Gaussian model and on a tiny
random-weight v-model."""
import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.inversion import EditPlan, ddim_invert, edit_latent, plan_edit, regenerate
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
