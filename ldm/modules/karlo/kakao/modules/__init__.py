"""Karlo's building blocks: the prior transformer (:mod:`.xf`) and the diffusion processes
(:mod:`.diffusion`); :func:`create_gaussian_diffusion` turns a config's ``diffusion`` section
into a (respaced) process."""
from __future__ import annotations

from typing import Sequence, Union

from ldm.modules.karlo.kakao.modules.diffusion import gaussian_diffusion as gd
from ldm.modules.karlo.kakao.modules.diffusion.respace import SpacedDiffusion, space_timesteps


def create_gaussian_diffusion(steps: int, learn_sigma: bool, sigma_small: bool, noise_schedule: str, use_kl: bool,
                              predict_xstart: bool, rescale_learned_sigmas: bool,
                              timestep_respacing: Union[str, Sequence[int]]) -> SpacedDiffusion:
    """The process of a Karlo config's ``diffusion`` section, sampled on the timesteps that
    ``timestep_respacing`` keeps (all ``steps`` of them when it is empty)."""
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    mean_type = gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON
    return SpacedDiffusion(use_timesteps=space_timesteps(steps, timestep_respacing or [steps]), betas=betas,
                           model_mean_type=mean_type, model_var_type=var_type, loss_type=loss_type)
