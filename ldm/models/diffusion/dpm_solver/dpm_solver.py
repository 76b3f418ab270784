"""DPM-Solver and DPM-Solver++ (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps"; Lu et al. 2022b, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models").

Both solve the probability-flow ODE exactly in its linear part and approximate the model term
by a Taylor expansion in lambda = log(alpha / sigma) (half-log-SNR). DPM-Solver expands the noise
prediction eps(x_lambda, lambda) (paper 1, eq. 3.7), DPM-Solver++ the data prediction x0
(paper 2, eq. 9). Writing ``hh = h`` and ``coef = sigma_t`` for the noise version, ``hh = -h`` and
``coef = alpha_t`` for the data version, every update below reads

    x_t = A x_s - coef * (phi_1 m_s + phi_2 D1 + phi_3 D2)

with ``phi_1 = expm1(hh)``, ``phi_2 = phi_1 / hh - 1``, ``phi_3 = phi_2 / hh - 1/2`` and
``A = alpha_t / alpha_s`` (noise) or ``sigma_t / sigma_s`` (data); D1, D2 are finite-difference
estimates of the first two lambda-derivatives of the model output m. Time is continuous,
t in [1/N, 1] for a discrete schedule of N steps; the network sees ``(t - 1/N) * 1000``.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from ldm.models.diffusion.sampling_util import append_dims

from .model_wrapper import model_wrapper
from .noise_schedule import NoiseScheduleVP, interpolate_fn

__all__ = ["DPM_Solver", "NoiseScheduleVP", "model_wrapper", "interpolate_fn"]


class DPM_Solver:
    """DPM-Solver (``predict_x0=False``) or DPM-Solver++ (``predict_x0=True``) of orders 1-3,
    singlestep, multistep or adaptive. ``thresholding`` applies Imagen's dynamic thresholding
    (Saharia et al. 2022: clip x0 to the 99.5th percentile of |x0|, at least ``max_val``, and
    rescale) to the data prediction."""

    def __init__(self, model_fn: Callable, noise_schedule: NoiseScheduleVP,
                 predict_x0: bool = False, thresholding: bool = False, max_val: float = 1.):
        self.model = model_fn
        self.noise_schedule = noise_schedule
        self.predict_x0 = predict_x0
        self.thresholding = thresholding
        self.max_val = max_val

    # -- model ------------------------------------------------------------------------------
    def noise_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)

    def data_prediction_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = (x - sigma_t eps) / alpha_t, dynamically thresholded if asked."""
        noise = self.noise_prediction_fn(x, t)
        dims = x.dim()
        ns = self.noise_schedule
        alpha_t, sigma_t = ns.marginal_alpha(t), ns.marginal_std(t)
        x0 = (x - append_dims(sigma_t, dims) * noise) / append_dims(alpha_t, dims)
        if self.thresholding:
            s = torch.quantile(torch.abs(x0).reshape((x0.shape[0], -1)), 0.995, dim=1)
            s = append_dims(torch.clamp(s, min=self.max_val), dims)
            x0 = torch.clamp(x0, -s, s) / s
        return x0

    def model_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.predict_x0:
            return self.data_prediction_fn(x, t)
        return self.noise_prediction_fn(x, t)

    def denoise_to_zero_fn(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """One final data prediction at time ``s`` (the "denoise to zero" step)."""
        return self.data_prediction_fn(x, s)

    # -- time steps -------------------------------------------------------------------------
    def get_time_steps(self, skip_type: str, t_T: float, t_0: float, N: int,
                       device) -> torch.Tensor:
        """N + 1 times from t_T to t_0, uniform in logSNR, in t, or in sqrt(t)."""
        dtype = self.noise_schedule.dtype
        if skip_type == "logSNR":
            lambda_T = self.noise_schedule.marginal_lambda(torch.tensor(t_T, dtype=dtype))
            lambda_0 = self.noise_schedule.marginal_lambda(torch.tensor(t_0, dtype=dtype))
            lambdas = torch.linspace(lambda_T.item(), lambda_0.item(), N + 1, dtype=dtype)
            return self.noise_schedule.inverse_lambda(lambdas).to(device)
        if skip_type == "time_uniform":
            return torch.linspace(t_T, t_0, N + 1, dtype=dtype).to(device)
        if skip_type == "time_quadratic":
            return torch.linspace(t_T ** 0.5, t_0 ** 0.5, N + 1, dtype=dtype).pow(2).to(device)
        raise ValueError(f"Unsupported skip_type {skip_type}, need to be 'logSNR' or "
                         "'time_uniform' or 'time_quadratic'")

    def get_orders_and_timesteps_for_singlestep_solver(self, steps: int, order: int,
                                                       skip_type: str, t_T: float, t_0: float,
                                                       device) -> Tuple[torch.Tensor, List[int]]:
        """Split ``steps`` model evaluations into singlestep updates of order ``order`` and a
        lower-order remainder ("DPM-Solver-fast", Lu et al. 2022, sec. 3.4)."""
        if order == 3:
            K = steps // 3 + 1
            remainder = {0: [2, 1], 1: [1], 2: [2]}[steps % 3]
            orders = [3] * (K - len(remainder)) + remainder
        elif order == 2:
            orders = [2] * (steps // 2) + [1] * (steps % 2)
        elif order == 1:
            orders = [1] * steps
        else:
            raise ValueError("'order' must be '1' or '2' or '3'.")
        if skip_type == "logSNR":
            timesteps_outer = self.get_time_steps(skip_type, t_T, t_0, len(orders), device)
        else:
            all_steps = self.get_time_steps(skip_type, t_T, t_0, steps, device)
            timesteps_outer = all_steps[torch.cumsum(torch.tensor([0] + orders), 0).to(device)]
        return timesteps_outer, orders

    # -- updates ----------------------------------------------------------------------------
    def _step_terms(self, s: torch.Tensor, t: torch.Tensor, dims: int):
        """``(h, hh, A, coef)`` of a step s -> t (see the module docstring), A and coef
        expanded to ``dims`` dimensions."""
        ns = self.noise_schedule
        h = ns.marginal_lambda(t) - ns.marginal_lambda(s)
        if self.predict_x0:
            A = ns.marginal_std(t) / ns.marginal_std(s)
            return h, -h, append_dims(A, dims), append_dims(ns.marginal_alpha(t), dims)
        A = torch.exp(ns.marginal_log_mean_coeff(t) - ns.marginal_log_mean_coeff(s))
        return h, h, append_dims(A, dims), append_dims(ns.marginal_std(t), dims)

    @staticmethod
    def _phis(hh: torch.Tensor, dims: int):
        phi_1 = torch.expm1(hh)
        phi_2 = phi_1 / hh - 1.
        phi_3 = phi_2 / hh - 0.5
        return tuple(append_dims(p, dims) for p in (phi_1, phi_2, phi_3))

    def _intermediate_time(self, s: torch.Tensor, h: torch.Tensor, r: float) -> torch.Tensor:
        return self.noise_schedule.inverse_lambda(self.noise_schedule.marginal_lambda(s) + r * h)

    def dpm_solver_first_update(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                                model_s: Optional[torch.Tensor] = None,
                                return_intermediate: bool = False):
        """First order: DDIM in lambda (paper 1, eq. 4.1; paper 2, eq. 10)."""
        _, hh, A, coef = self._step_terms(s, t, x.dim())
        if model_s is None:
            model_s = self.model_fn(x, s)
        x_t = A * x - coef * append_dims(torch.expm1(hh), x.dim()) * model_s
        return (x_t, {"model_s": model_s}) if return_intermediate else x_t

    def singlestep_dpm_solver_second_update(self, x: torch.Tensor, s: torch.Tensor,
                                            t: torch.Tensor, r1: Optional[float] = 0.5,
                                            model_s: Optional[torch.Tensor] = None,
                                            return_intermediate: bool = False,
                                            solver_type: str = "dpm_solver"):
        """DPM-Solver-2 (paper 1, Alg. 1) / DPM-Solver++(2S) (paper 2, Alg. 1): one extra
        evaluation at lambda_s + r1 h."""
        if solver_type not in ("dpm_solver", "taylor"):
            raise ValueError(f"'solver_type' must be 'dpm_solver' or 'taylor', got {solver_type}")
        r1 = 0.5 if r1 is None else r1
        dims = x.dim()
        h, hh, A, coef = self._step_terms(s, t, dims)
        s1 = self._intermediate_time(s, h, r1)
        if model_s is None:
            model_s = self.model_fn(x, s)
        x_s1 = self.dpm_solver_first_update(x, s, s1, model_s=model_s)
        model_s1 = self.model_fn(x_s1, s1)
        phi_1, phi_2, _ = self._phis(hh, dims)
        if solver_type == "dpm_solver":
            correction = (0.5 / r1) * phi_1 * (model_s1 - model_s)
        else:
            correction = (1. / r1) * phi_2 * (model_s1 - model_s)
        x_t = A * x - coef * (phi_1 * model_s + correction)
        if return_intermediate:
            return x_t, {"model_s": model_s, "model_s1": model_s1}
        return x_t

    def singlestep_dpm_solver_third_update(self, x: torch.Tensor, s: torch.Tensor,
                                           t: torch.Tensor, r1: Optional[float] = 1. / 3.,
                                           r2: Optional[float] = 2. / 3.,
                                           model_s: Optional[torch.Tensor] = None,
                                           model_s1: Optional[torch.Tensor] = None,
                                           return_intermediate: bool = False,
                                           solver_type: str = "dpm_solver"):
        """DPM-Solver-3 (paper 1, Alg. 2) and its data-prediction form: evaluations at
        lambda_s + r1 h and lambda_s + r2 h."""
        if solver_type not in ("dpm_solver", "taylor"):
            raise ValueError(f"'solver_type' must be 'dpm_solver' or 'taylor', got {solver_type}")
        r1 = 1. / 3. if r1 is None else r1
        r2 = 2. / 3. if r2 is None else r2
        dims = x.dim()
        h, hh, A, coef = self._step_terms(s, t, dims)
        s1, s2 = self._intermediate_time(s, h, r1), self._intermediate_time(s, h, r2)
        if model_s is None:
            model_s = self.model_fn(x, s)
        if model_s1 is None:
            x_s1 = self.dpm_solver_first_update(x, s, s1, model_s=model_s)
            model_s1 = self.model_fn(x_s1, s1)
        _, hh_2, A_2, coef_2 = self._step_terms(s, s2, dims)
        phi_1_2, phi_2_2, _ = self._phis(hh_2, dims)
        x_s2 = A_2 * x - coef_2 * (phi_1_2 * model_s + (r2 / r1) * phi_2_2 * (model_s1 - model_s))
        model_s2 = self.model_fn(x_s2, s2)
        phi_1, phi_2, phi_3 = self._phis(hh, dims)
        if solver_type == "dpm_solver":
            x_t = A * x - coef * (phi_1 * model_s + (1. / r2) * phi_2 * (model_s2 - model_s))
        else:
            D1_0 = (1. / r1) * (model_s1 - model_s)
            D1_1 = (1. / r2) * (model_s2 - model_s)
            D1 = (r2 * D1_0 - r1 * D1_1) / (r2 - r1)
            D2 = 2. * (D1_1 - D1_0) / (r2 - r1)
            x_t = A * x - coef * (phi_1 * model_s + phi_2 * D1 + phi_3 * D2)
        if return_intermediate:
            return x_t, {"model_s": model_s, "model_s1": model_s1, "model_s2": model_s2}
        return x_t

    def multistep_dpm_solver_second_update(self, x: torch.Tensor, model_prev_list: List,
                                           t_prev_list: List, t: torch.Tensor,
                                           solver_type: str = "dpm_solver") -> torch.Tensor:
        """Multistep second order (paper 2, Alg. 2, DPM-Solver++(2M)): the derivative from the
        previous model output, no extra evaluation."""
        if solver_type not in ("dpm_solver", "taylor"):
            raise ValueError(f"'solver_type' must be 'dpm_solver' or 'taylor', got {solver_type}")
        ns = self.noise_schedule
        dims = x.dim()
        model_prev_1, model_prev_0 = model_prev_list[-2:]
        t_prev_1, t_prev_0 = t_prev_list[-2:]
        h, hh, A, coef = self._step_terms(t_prev_0, t, dims)
        h_0 = ns.marginal_lambda(t_prev_0) - ns.marginal_lambda(t_prev_1)
        D1_0 = append_dims(h / h_0, dims) * (model_prev_0 - model_prev_1)
        phi_1, phi_2, _ = self._phis(hh, dims)
        correction = 0.5 * phi_1 * D1_0 if solver_type == "dpm_solver" else phi_2 * D1_0
        return A * x - coef * (phi_1 * model_prev_0 + correction)

    def multistep_dpm_solver_third_update(self, x: torch.Tensor, model_prev_list: List,
                                          t_prev_list: List, t: torch.Tensor,
                                          solver_type: str = "dpm_solver") -> torch.Tensor:
        """Multistep third order (DPM-Solver(++)-3M): first and second lambda-derivatives from
        the three previous model outputs.

        Kept exactly as the original computes it: D2 = (D1_0 - D1_1) / (r0 + r1). Note that this
        estimates h^2 m'' / 2 while phi_3 multiplies h^2 m'' (check with m = lambda^2), so the
        original 3M converges at second order only; doubling D2 would restore third order, but
        numbers equal to the original's are the contract here (``--dpm`` uses order 2 and is
        not affected).
        """
        ns = self.noise_schedule
        dims = x.dim()
        model_prev_2, model_prev_1, model_prev_0 = model_prev_list[-3:]
        t_prev_2, t_prev_1, t_prev_0 = t_prev_list[-3:]
        h, hh, A, coef = self._step_terms(t_prev_0, t, dims)
        lambda_prev_2, lambda_prev_1, lambda_prev_0 = (ns.marginal_lambda(t_prev_2),
                                                       ns.marginal_lambda(t_prev_1),
                                                       ns.marginal_lambda(t_prev_0))
        r0 = (lambda_prev_0 - lambda_prev_1) / h
        r1 = (lambda_prev_1 - lambda_prev_2) / h
        D1_0 = append_dims(1. / r0, dims) * (model_prev_0 - model_prev_1)
        D1_1 = append_dims(1. / r1, dims) * (model_prev_1 - model_prev_2)
        D1 = D1_0 + append_dims(r0 / (r0 + r1), dims) * (D1_0 - D1_1)
        D2 = append_dims(1. / (r0 + r1), dims) * (D1_0 - D1_1)
        phi_1, phi_2, phi_3 = self._phis(hh, dims)
        return A * x - coef * (phi_1 * model_prev_0 + phi_2 * D1 + phi_3 * D2)

    def singlestep_dpm_solver_update(self, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                                     order: int, return_intermediate: bool = False,
                                     solver_type: str = "dpm_solver", r1: Optional[float] = None,
                                     r2: Optional[float] = None):
        if order == 1:
            return self.dpm_solver_first_update(x, s, t, return_intermediate=return_intermediate)
        if order == 2:
            return self.singlestep_dpm_solver_second_update(
                x, s, t, return_intermediate=return_intermediate, solver_type=solver_type, r1=r1)
        if order == 3:
            return self.singlestep_dpm_solver_third_update(
                x, s, t, return_intermediate=return_intermediate, solver_type=solver_type,
                r1=r1, r2=r2)
        raise ValueError(f"Solver order must be 1 or 2 or 3, got {order}")

    def multistep_dpm_solver_update(self, x: torch.Tensor, model_prev_list: List,
                                    t_prev_list: List, t: torch.Tensor, order: int,
                                    solver_type: str = "dpm_solver") -> torch.Tensor:
        if order == 1:
            return self.dpm_solver_first_update(x, t_prev_list[-1], t, model_s=model_prev_list[-1])
        if order == 2:
            return self.multistep_dpm_solver_second_update(x, model_prev_list, t_prev_list, t,
                                                           solver_type=solver_type)
        if order == 3:
            return self.multistep_dpm_solver_third_update(x, model_prev_list, t_prev_list, t,
                                                          solver_type=solver_type)
        raise ValueError(f"Solver order must be 1 or 2 or 3, got {order}")

    def dpm_solver_adaptive(self, x: torch.Tensor, order: int, t_T: float, t_0: float,
                            h_init: float = 0.05, atol: float = 0.0078, rtol: float = 0.05,
                            theta: float = 0.9, t_err: float = 1e-5,
                            solver_type: str = "dpm_solver") -> torch.Tensor:
        """Adaptive step size (paper 1, Alg. 4): compare orders (1, 2) or (2, 3) on each step,
        accept when the scaled RMS difference is <= 1, and set h <- theta h E^(-1/order)."""
        ns = self.noise_schedule
        s = t_T * torch.ones((x.shape[0],)).to(x)
        lambda_s = ns.marginal_lambda(s)
        lambda_0 = ns.marginal_lambda(t_0 * torch.ones_like(s))
        h = h_init * torch.ones_like(s)
        x_prev = x
        if order == 2:
            r1 = 0.5

            def lower_update(x, s, t):
                return self.dpm_solver_first_update(x, s, t, return_intermediate=True)

            def higher_update(x, s, t, **kw):
                return self.singlestep_dpm_solver_second_update(x, s, t, r1=r1,
                                                                solver_type=solver_type, **kw)
        elif order == 3:
            r1, r2 = 1. / 3., 2. / 3.

            def lower_update(x, s, t):
                return self.singlestep_dpm_solver_second_update(
                    x, s, t, r1=r1, return_intermediate=True, solver_type=solver_type)

            def higher_update(x, s, t, **kw):
                return self.singlestep_dpm_solver_third_update(x, s, t, r1=r1, r2=r2,
                                                               solver_type=solver_type, **kw)
        else:
            raise ValueError(f"For adaptive step size solver, order must be 2 or 3, got {order}")
        while torch.abs(s - t_0).mean() > t_err:
            t = ns.inverse_lambda(lambda_s + h)
            x_lower, lower_noise_kwargs = lower_update(x, s, t)
            x_higher = higher_update(x, s, t, **lower_noise_kwargs)
            delta = torch.max(torch.ones_like(x) * atol,
                              rtol * torch.max(torch.abs(x_lower), torch.abs(x_prev)))
            diff = ((x_higher - x_lower) / delta).reshape((x.shape[0], -1))
            E = torch.sqrt(torch.square(diff).mean(dim=-1, keepdim=True)).max()
            if torch.all(E <= 1.):
                x, s, x_prev = x_higher, t, x_lower
                lambda_s = ns.marginal_lambda(s)
            h = torch.min(theta * h * torch.float_power(E, -1. / order).to(h.dtype),
                          lambda_0 - lambda_s)
        return x

    # -- driver -----------------------------------------------------------------------------
    def sample(self, x: torch.Tensor, steps: int = 20, t_start: Optional[float] = None,
               t_end: Optional[float] = None, order: int = 3, skip_type: str = "time_uniform",
               method: str = "singlestep", lower_order_final: bool = True,
               denoise_to_zero: bool = False, solver_type: str = "dpm_solver",
               atol: float = 0.0078, rtol: float = 0.05) -> torch.Tensor:
        """Solve from ``t_start`` (default T) to ``t_end`` (default 1/N) with ``steps`` model
        evaluations. ``method``: ``singlestep`` (mix of orders using exactly ``steps``
        evaluations), ``singlestep_fixed`` (steps // order updates of ``order``), ``multistep``
        (lower orders for warm-up and, below 15 steps with ``lower_order_final``, for the last
        steps), or ``adaptive``."""
        t_0 = 1. / self.noise_schedule.total_N if t_end is None else t_end
        t_T = self.noise_schedule.T if t_start is None else t_start
        device = x.device
        with torch.no_grad():
            if method == "adaptive":
                x = self.dpm_solver_adaptive(x, order=order, t_T=t_T, t_0=t_0, atol=atol,
                                             rtol=rtol, solver_type=solver_type)
            elif method == "multistep":
                x = self._sample_multistep(x, steps, order, skip_type, t_T, t_0,
                                           lower_order_final, solver_type, device)
            elif method in ("singlestep", "singlestep_fixed"):
                x = self._sample_singlestep(x, steps, order, skip_type, t_T, t_0, method,
                                            solver_type, device)
            else:
                raise ValueError(f"Got wrong method {method}; expected singlestep, "
                                 "singlestep_fixed, multistep or adaptive")
            if denoise_to_zero:
                x = self.denoise_to_zero_fn(x, torch.ones((x.shape[0],)).to(device) * t_0)
        return x

    def _sample_multistep(self, x, steps, order, skip_type, t_T, t_0, lower_order_final,
                          solver_type, device) -> torch.Tensor:
        if steps < order:
            raise ValueError(f"multistep DPM-Solver of order {order} needs at least {order} "
                             f"steps, got {steps}")
        timesteps = self.get_time_steps(skip_type=skip_type, t_T=t_T, t_0=t_0, N=steps,
                                        device=device)
        vec_t = timesteps[0].expand((x.shape[0]))
        model_prev_list = [self.model_fn(x, vec_t)]
        t_prev_list = [vec_t]
        for init_order in range(1, order):  # warm-up with lower orders
            vec_t = timesteps[init_order].expand(x.shape[0])
            x = self.multistep_dpm_solver_update(x, model_prev_list, t_prev_list, vec_t,
                                                 init_order, solver_type=solver_type)
            model_prev_list.append(self.model_fn(x, vec_t))
            t_prev_list.append(vec_t)
        for step in range(order, steps + 1):
            vec_t = timesteps[step].expand(x.shape[0])
            step_order = (min(order, steps + 1 - step) if lower_order_final and steps < 15
                          else order)
            x = self.multistep_dpm_solver_update(x, model_prev_list, t_prev_list, vec_t,
                                                 step_order, solver_type=solver_type)
            t_prev_list = t_prev_list[1:] + [vec_t]
            model_prev_list = model_prev_list[1:] + [model_prev_list[-1]]
            if step < steps:  # the final model value is never needed
                model_prev_list[-1] = self.model_fn(x, vec_t)
        return x

    def _sample_singlestep(self, x, steps, order, skip_type, t_T, t_0, method, solver_type,
                           device) -> torch.Tensor:
        if method == "singlestep":
            timesteps_outer, orders = self.get_orders_and_timesteps_for_singlestep_solver(
                steps=steps, order=order, skip_type=skip_type, t_T=t_T, t_0=t_0, device=device)
        else:
            orders = [order] * (steps // order)
            timesteps_outer = self.get_time_steps(skip_type=skip_type, t_T=t_T, t_0=t_0,
                                                  N=len(orders), device=device)
        for i, step_order in enumerate(orders):
            t_T_inner, t_0_inner = timesteps_outer[i], timesteps_outer[i + 1]
            timesteps_inner = self.get_time_steps(skip_type=skip_type, t_T=t_T_inner.item(),
                                                  t_0=t_0_inner.item(), N=step_order,
                                                  device=device)
            lambda_inner = self.noise_schedule.marginal_lambda(timesteps_inner)
            vec_s, vec_t = t_T_inner.tile(x.shape[0]), t_0_inner.tile(x.shape[0])
            h = lambda_inner[-1] - lambda_inner[0]
            r1 = None if step_order <= 1 else (lambda_inner[1] - lambda_inner[0]) / h
            r2 = None if step_order <= 2 else (lambda_inner[2] - lambda_inner[0]) / h
            x = self.singlestep_dpm_solver_update(x, vec_s, vec_t, step_order,
                                                  solver_type=solver_type, r1=r1, r2=r2)
        return x
