"""UniPC: the predictor reduces to DPM-Solver++(2M) at order 2 (bh2), the corrector raises the
order by one at no extra model evaluation."""
import math

import pytest
import torch

from ldm.models.diffusion.sigma_schedule import (
    DiscreteSigmaSchedule,
    ModelDenoiser,
    sigma_to_vp_space,
    vp_to_sigma_space,
)
from ldm.models.diffusion.uni_pc import sample_unipc, unipc_update
from tests.models.diffusion.gaussian_analytic import GaussianDataModel, fitted_order, format_table, relative_error

STEPS = (5, 10, 20, 40)


def test_second_order_predictor_is_the_dpmpp_2m_step():
    sigmas = torch.tensor([4.0, 2.0, 0.7], dtype=torch.float64)
    x, m_prev, m_s = (torch.randn(3, dtype=torch.float64) for _ in range(3))
    lambdas = [-torch.log(sigmas[0]), -torch.log(sigmas[1])]
    ours = unipc_update(x, sigmas[1], sigmas[2], [m_prev, m_s], lambdas, order=2)
    h_last, h = (torch.log(sigmas[:2] / sigmas[1:]))
    r = h_last / h  # DPM-Solver++(2M), Lu et al. 2022b Alg. 2
    denoised_d = (1 + 1 / (2 * r)) * m_s - 1 / (2 * r) * m_prev
    reference = sigmas[2] / sigmas[1] * x - torch.expm1(-h) * denoised_d
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order, expected", [(1, 1.7), (2, 2.7), (3, 2.7)])
def test_unipc_converges_one_order_above_its_predictor(order, expected):
    """Measured on longer runs: orders 2.0, 3.0 and 3.8 (80 -> 160 steps) for p = 1, 2, 3."""
    model = GaussianDataModel(data_std=2.0, interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    x_T = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    results = []
    for n in STEPS:
        sigmas = torch.exp(torch.linspace(math.log(schedule.sigma_max),
                                          math.log(schedule.sigma_min), n + 1,
                                          dtype=torch.float64))
        denoiser = ModelDenoiser(model, schedule)
        out = sample_unipc(denoiser, vp_to_sigma_space(x_T, sigmas[0]), sigmas, disable=True,
                           order=order)
        exact = model.exact_flow(x_T, 1 / (1 + float(sigmas[0]) ** 2),
                                 1 / (1 + float(sigmas[-1]) ** 2))
        results.append((relative_error(sigma_to_vp_space(out, sigmas[-1]), exact),
                        denoiser.calls))
    print("\n" + format_table(f"UniPC-{order} (bh2, log-sigma-uniform steps) vs exact flow, "
                              "N(0, 2^2)", STEPS, {f"unipc-{order}": results}))
    errors = [e for e, _ in results]
    assert [n for _, n in results] == list(STEPS)
    assert errors[1] > errors[2] > errors[3]
    assert fitted_order(STEPS[1:], errors[1:]) > expected


def test_final_step_to_sigma_zero_returns_the_last_data_prediction():
    model = GaussianDataModel(data_std=2.0, interpolation="log_sigma")
    schedule = DiscreteSigmaSchedule(model.alphas_cumprod)
    sigmas = schedule.get_sigmas(6, "karras")
    predictions = []
    out = sample_unipc(ModelDenoiser(model, schedule), torch.randn(1, 4, 2, 2).double() * 14,
                       sigmas, disable=True, callback=lambda i, x, m: predictions.append(m))
    assert torch.equal(out, predictions[-1])
