"""Timestep respacing (ldm/modules/karlo/kakao/modules/diffusion/respace.py): hand-computed kept
steps, diffusers' UnCLIPScheduler grid, and the respaced process's schedule."""
import numpy as np
import pytest
import torch

from ldm.modules.karlo.kakao.modules import create_gaussian_diffusion
from ldm.modules.karlo.kakao.modules.diffusion import gaussian_diffusion as gd
from ldm.modules.karlo.kakao.modules.diffusion.respace import SpacedDiffusion, space_timesteps


@pytest.mark.parametrize("total,counts,expected", [
    (10, "4", {0, 3, 6, 9}),            # stride 9 / 3 = 3
    (10, "3", {0, 4, 9}),               # stride 4.5: round(4.5) = 4 (half to even), round(9.0) = 9
    (10, [2, 3], {0, 4, 5, 7, 9}),      # sections [0, 5) and [5, 10): strides 4 and 2
    (7, "1,1", {0, 4}),                 # sections of 4 (the first takes the remainder) and 3
    (5, "5", {0, 1, 2, 3, 4}),
    (100, "ddim5", {0, 20, 40, 60, 80}),
    (1000, "1", {0}),
])
def test_space_timesteps_keeps_the_hand_computed_steps(total, counts, expected):
    assert space_timesteps(total, counts) == expected


def test_fast27_swaps_the_noisiest_step():
    steps = space_timesteps(1000, "fast27")
    assert len(steps) == 27 and 999 not in steps and 997 in steps


@pytest.mark.parametrize("counts", ["11", "5,7"])
def test_more_steps_than_a_section_holds_is_an_error(counts):
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, counts)


@pytest.mark.parametrize("steps", [25, 50, 7])
def test_single_section_grid_is_diffusers_unclip_scheduler_grid(steps):
    from diffusers import UnCLIPScheduler

    scheduler = UnCLIPScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    assert sorted(space_timesteps(1000, str(steps))) == sorted(scheduler.timesteps.tolist())


def test_respaced_process_keeps_the_cumulative_alphas_of_the_kept_steps():
    base = create_gaussian_diffusion(steps=1000, learn_sigma=False, sigma_small=True,
                                     noise_schedule="squaredcos_cap_v2", use_kl=False, predict_xstart=True,
                                     rescale_learned_sigmas=False, timestep_respacing="")
    spaced = create_gaussian_diffusion(steps=1000, learn_sigma=False, sigma_small=True,
                                       noise_schedule="squaredcos_cap_v2", use_kl=False, predict_xstart=True,
                                       rescale_learned_sigmas=False, timestep_respacing="25")
    kept = sorted(space_timesteps(1000, "25"))
    assert base.num_timesteps == 1000 and spaced.num_timesteps == 25
    assert spaced.timestep_map.tolist() == kept
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9, atol=0)
    assert spaced.model_mean_type == gd.ModelMeanType.START_X and spaced.model_var_type == gd.ModelVarType.FIXED_SMALL


def test_the_network_sees_the_training_timesteps():
    spaced = SpacedDiffusion([0, 500, 999], betas=np.linspace(1e-4, 0.02, 1000),
                             model_mean_type=gd.ModelMeanType.START_X, model_var_type=gd.ModelVarType.FIXED_SMALL,
                             loss_type=gd.LossType.MSE)
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    spaced.p_sample_loop(model, (2, 3), device=torch.device("cpu"))
    assert seen == [[999, 999], [500, 500], [0, 0]]
