"""``DPMSolverSampler``: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) with the ``sample(...)``
call of DDIM, as the originals' ``--dpm`` / ``--dpm_solver`` flag runs it: multistep, order 2,
steps uniform in time, lower orders at the end below 15 steps, no thresholding."""
from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Tuple

import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling_util import Sampler, SamplerCapabilities, check_finite, randn

from .dpm_solver import DPM_Solver
from .model_wrapper import model_wrapper
from .noise_schedule import NoiseScheduleVP

MODEL_TYPES = {"eps": "noise", "v": "v", "x0": "x_start"}

DPM_CAPABILITIES = SamplerCapabilities(
    "dpm", frozenset({"callback", "generator", "cond_fn"}),
    why_not=(("mask", "it solves the ODE from x_T without a known-region blend"),
             ("img_callback", "it reports model evaluations, not x0 predictions"),
             ("log_every_t", "it returns no intermediates, as the originals' DPMSolverSampler"),
             ("dynamic_threshold", "it runs DPM-Solver++ without thresholding, as the originals' "
                                   "DPMSolverSampler does")))


class DPMSolverSampler(Sampler):
    """``DPMSolverSampler(model, device=None)``; ``sample`` returns ``(samples, None)`` after
    ``S`` model evaluations, calling ``callback(i)`` after evaluation i (one per step). A model
    output with NaN/inf raises ``NonFiniteSampleError``."""

    capabilities = DPM_CAPABILITIES

    def __init__(self, model, device=None, **kwargs):
        super().__init__(model, device)
        self.register_buffer("alphas_cumprod", model.alphas_cumprod.detach().to(torch.float32))

    def _sample(self, S: int, size: Tuple[int, ...], request: SimpleNamespace):
        if self.model.parameterization not in MODEL_TYPES:
            raise ValueError(f"DPM-Solver cannot sample a '{self.model.parameterization}' model")
        if request.verbose:
            print(f"Data shape for DPM-Solver sampling is {size}, sampling steps {S}")
        img = (randn(size, request.generator, device=self.device) if request.x_T is None
               else request.x_T)

        evaluations = itertools.count()
        progress = tqdm(total=S, desc="DPM-Solver Sampler", disable=not request.verbose)

        def apply_model(x, t, c=None):
            out = self.model.apply_model(x, t, c)
            evaluation = next(evaluations)
            check_finite(out, evaluation + 1, S, "DPM-Solver")
            progress.update(1)
            if request.callback:
                request.callback(evaluation)
            return out

        ns = NoiseScheduleVP("discrete", alphas_cumprod=self.alphas_cumprod)
        model_fn = model_wrapper(
            apply_model, ns,
            model_type=MODEL_TYPES[self.model.parameterization],
            guidance_type="classifier-free", condition=request.conditioning,
            unconditional_condition=request.unconditional_conditioning,
            guidance_scale=request.unconditional_guidance_scale, cond_fn=request.cond_fn)
        dpm_solver = DPM_Solver(model_fn, ns, predict_x0=True, thresholding=False)
        x = dpm_solver.sample(img, steps=S, skip_type="time_uniform", method="multistep",
                              order=2, lower_order_final=True)
        progress.close()
        return x.to(self.device), None
