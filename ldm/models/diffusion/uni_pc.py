"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), data-prediction form with B(h) = e^-h - 1 (the paper's "bh2" variant, which
it recommends for guided sampling), in sigma space.

With lambda = -log(sigma), h = lambda_t - lambda_s and the data prediction m = D(x; sigma), the
exact solution is x_t = (sigma_t / sigma_s) x_s - expm1(-h) m_s - sum_n c_n h^n m^(n)(lambda_s),
c_n = (e^-h - sum_{j<=n} (-h)^j / j!) / (-h)^n. UniP-p (paper eq. 8 / Alg. 3) estimates the sum
from p - 1 earlier outputs at relative positions r_k; UniC-p (eq. 9 / Alg. 2) re-solves the same
step once m_t at the predicted point is known, raising the order by one at no extra model
evaluation. The coefficients solve R a = b with R[n][k] = r_k^n and b_n = c_n n! / B(h).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from tqdm import trange


def _coefficient_system(rks: torch.Tensor, h: torch.Tensor):
    """``(R, b, B(h), expm1(-h))`` for relative positions ``rks`` (the last one is 1)."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    B_h = torch.expm1(hh)  # "bh2"; "bh1" would be hh
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for n in range(1, len(rks) + 1):
        rows.append(rks ** (n - 1))
        b.append(h_phi_k * factorial / B_h)
        factorial *= n + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(b), B_h, h_phi_1


def _differences(ms: List[torch.Tensor], lambdas: List[torch.Tensor], order: int,
                 h: torch.Tensor):
    """Relative positions r_k and scaled differences (m_k - m_s) / r_k of the ``order - 1``
    outputs before the latest one."""
    rks, d1s = [], []
    for k in range(1, order):
        r_k = (lambdas[-1 - k] - lambdas[-1]) / h
        rks.append(r_k)
        d1s.append((ms[-1 - k] - ms[-1]) / r_k)
    rks.append(torch.ones_like(h))
    return torch.stack(rks), d1s


def unipc_update(x_s: torch.Tensor, sigma_s: torch.Tensor, sigma_t: torch.Tensor,
                 ms: List[torch.Tensor], lambdas: List[torch.Tensor], order: int,
                 m_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One UniP-``order`` step from sigma_s to sigma_t, or with ``m_t`` (the data prediction
    at the predicted x_t) the UniC-``order`` correction of that step."""
    h = torch.log(sigma_s) - torch.log(sigma_t)
    rks, d1s = _differences(ms, lambdas, order, h)
    R, b, B_h, h_phi_1 = _coefficient_system(rks, h)
    m_s = ms[-1]
    x_t = (sigma_t / sigma_s) * x_s - h_phi_1 * m_s
    if m_t is None:
        if order == 1:
            return x_t
        rhos = (torch.tensor([0.5], dtype=h.dtype, device=h.device) if order == 2
                else torch.linalg.solve(R[:-1, :-1], b[:-1]))
        return x_t - B_h * sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = (torch.tensor([0.5], dtype=h.dtype, device=h.device) if order == 1
            else torch.linalg.solve(R, b))
    correction = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(x_s))
    return x_t - B_h * (correction + rhos[-1] * (m_t - m_s))


def sample_unipc(denoiser: Callable, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Optional[Callable] = None, disable: Optional[bool] = None,
                 generator=None, order: int = 2) -> torch.Tensor:
    """UniPC-``order`` (UniP-p predictor + UniC-p corrector, Zhao et al. 2023, Alg. 2-3, bh2)
    on the noise levels ``sigmas``; one model evaluation per step, converging at order
    ``order + 1``. Order 2 is the paper's choice for guided sampling (and more robust than 3 on
    time-uniform steps in benchmarks/sampler_accuracy.py). Orders ramp up from 1 over the first
    steps, drop at the end for runs under 15 steps (as DPM-Solver does), and a final step to
    sigma = 0 returns the last data prediction. ``generator`` is unused (deterministic)."""
    n = len(sigmas) - 1
    ms: List[torch.Tensor] = []
    lambdas: List[torch.Tensor] = []
    x_s, step_order = None, 1
    for i in trange(n, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        m = denoiser(x, sigma)
        if i > 0:
            x = unipc_update(x_s, sigmas[i - 1], sigma, ms, lambdas, step_order, m_t=m)
        ms, lambdas = (ms + [m])[-order:], (lambdas + [-torch.log(sigma)])[-order:]
        if sigma_next == 0:
            x = m
        else:
            step_order = min(order, i + 1, n - i) if n < 15 else min(order, i + 1)
            x_s = x
            x = unipc_update(x_s, sigma, sigma_next, ms, lambdas, step_order)
        if callback is not None:
            callback(i, x, m)
    return x
