"""``DPMSolverSampler``: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) with the ``sample(...)``
call of DDIM, as the originals' ``--dpm`` / ``--dpm_solver`` flag runs it: multistep, order 2,
steps uniform in time, lower orders at the end below 15 steps, no thresholding."""
from __future__ import annotations

import itertools
from typing import Any, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from ldm.models.diffusion.sampling_util import Generator, randn, warn_on_batch_mismatch

from .dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper

MODEL_TYPES = {"eps": "noise", "v": "v", "x0": "x_start"}


class DPMSolverSampler:
    """``DPMSolverSampler(model, device=None)``; ``sample`` returns ``(samples, None)``."""

    def __init__(self, model, device=None, **kwargs):
        self.model = model
        self.device = torch.device(device) if device is not None else model.device
        self.register_buffer("alphas_cumprod", model.alphas_cumprod.detach().to(torch.float32))

    def register_buffer(self, name: str, attr: Any) -> None:
        """Store ``attr`` as an attribute, on the sampler's device when it is a tensor."""
        if isinstance(attr, torch.Tensor) and attr.device != self.device:
            attr = attr.to(self.device)
        setattr(self, name, attr)

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback=None, normals_sequence=None, img_callback=None, quantize_x0: bool = False,
               eta: float = 0., mask: Optional[torch.Tensor] = None,
               x0: Optional[torch.Tensor] = None, temperature: float = 1.,
               noise_dropout: float = 0., score_corrector=None, corrector_kwargs=None,
               verbose: bool = True, x_T: Optional[torch.Tensor] = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1., unconditional_conditioning: Any = None,
               generator: Generator = None, **kwargs) -> Tuple[torch.Tensor, None]:
        """Sample in ``S`` model evaluations; ``callback(i)`` is called after evaluation i (one
        per step). The DDIM-only options (eta, img_callback, temperature, ...) are accepted
        and ignored as in the original; ``mask``/``x0`` inpainting is refused because it would
        be silently ignored."""
        if mask is not None or x0 is not None:
            raise ValueError("the DPM-Solver sampler does not support mask/x0 inpainting; "
                             "use ddim or plms")
        if self.model.parameterization not in MODEL_TYPES:
            raise ValueError(f"DPM-Solver cannot sample a '{self.model.parameterization}' model")
        warn_on_batch_mismatch(conditioning, batch_size)
        C, H, W = shape
        size = (batch_size, C, H, W)
        if verbose:
            print(f"Data shape for DPM-Solver sampling is {size}, sampling steps {S}")
        img = randn(size, generator, device=self.device) if x_T is None else x_T

        evaluations = itertools.count()
        progress = tqdm(total=S, desc="DPM-Solver Sampler", disable=not verbose)

        def apply_model(x, t, c=None):
            out = self.model.apply_model(x, t, c)
            progress.update(1)
            if callback:
                callback(next(evaluations))
            return out

        ns = NoiseScheduleVP("discrete", alphas_cumprod=self.alphas_cumprod)
        model_fn = model_wrapper(
            apply_model, ns,
            model_type=MODEL_TYPES[self.model.parameterization],
            guidance_type="classifier-free", condition=conditioning,
            unconditional_condition=unconditional_conditioning,
            guidance_scale=unconditional_guidance_scale)
        dpm_solver = DPM_Solver(model_fn, ns, predict_x0=True, thresholding=False)
        x = dpm_solver.sample(img, steps=S, skip_type="time_uniform", method="multistep",
                              order=2, lower_order_final=True)
        progress.close()
        return x.to(self.device), None
