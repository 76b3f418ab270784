"""The DDPM sampler's pieces (ldm/models/diffusion/ancestral.py): the visited timesteps, the
posterior of Ho et al. 2020 (eqs. 6-7) against the model's own buffers, and the x0 prediction of
each parameterization."""
import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.ancestral import posterior_coefficients, predicted_x0, respaced_timesteps
from ldm.modules.diffusionmodules.util import StepCountError
from tests.models.diffusion.test_ddpm import schedule_only_ddpm


def test_every_timestep_is_visited_when_steps_equal_the_schedule():
    assert respaced_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))


def test_fewer_steps_spread_from_the_last_timestep_to_zero():
    assert respaced_timesteps(5, 1000).tolist() == [999, 749, 500, 250, 0]
    assert respaced_timesteps(1, 1000).tolist() == [999]
    steps = respaced_timesteps(999, 1000)
    assert len(set(steps.tolist())) == 999 and (np.diff(steps) < 0).all()


@pytest.mark.parametrize("steps", [0, 1001])
def test_step_counts_outside_the_schedule_are_refused(steps):
    with pytest.raises(StepCountError, match=r"--steps must be in \[1, 1000\]"):
        respaced_timesteps(steps, 1000)


def test_consecutive_steps_have_the_models_posterior_coefficients():
    """To float32 rounding: the model computes its buffers from the float64 betas, the samplers
    from the float32 ``alphas_cumprod`` (1 - a_t near t = 0 keeps only ~4 digits)."""
    model = schedule_only_ddpm()
    abar = model.alphas_cumprod.double().tolist()
    for t in (0, 1, 10, 500, 999):
        c_x0, c_xt, std = posterior_coefficients(abar[t], abar[t - 1] if t > 0 else 1.0)
        assert c_x0 == pytest.approx(float(model.posterior_mean_coef1[t]), rel=1e-3)
        assert c_xt == pytest.approx(float(model.posterior_mean_coef2[t]), rel=1e-3, abs=1e-7)
        assert std ** 2 == pytest.approx(float(model.posterior_variance[t]), rel=1e-3, abs=1e-12)


def test_a_respaced_step_is_the_bayes_posterior_of_the_forward_process():
    """For x_t = sqrt(a_t / a_s) x_s + noise and x_s ~ q(x_s | x0), the posterior variance is
    the product of the two variances over their sum (rescaled), and its mean the weighted one."""
    a_t, a_s = 0.3, 0.8
    c_x0, c_xt, std = posterior_coefficients(a_t, a_s)
    ratio, var_s, var_ts = a_t / a_s, 1 - a_s, 1 - a_t / a_s
    precision = 1 / var_s + ratio / var_ts
    assert std ** 2 == pytest.approx(1 / precision)
    assert c_x0 == pytest.approx(math.sqrt(a_s) / var_s / precision)
    assert c_xt == pytest.approx(math.sqrt(ratio) / var_ts / precision)


def test_x0_predictions_invert_the_forward_process():
    x0, eps, a = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), 0.37
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    for name, output in (("eps", eps), ("x0", x0), ("v", v)):
        assert torch.allclose(predicted_x0(name, x_t, output, a), x0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown parameterization"):
        predicted_x0("score", x_t, eps, a)
