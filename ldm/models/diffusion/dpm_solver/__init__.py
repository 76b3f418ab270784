"""DPM-Solver(++) and the sampler that runs it on a LatentDiffusion model, under the originals'
names: the noise schedule (``noise_schedule``), the network as a noise predictor
(``model_wrapper``), the solver (``dpm_solver``) and ``DPMSolverSampler`` (``sampler``)."""
from .dpm_solver import DPM_Solver
from .model_wrapper import model_wrapper
from .noise_schedule import NoiseScheduleVP
from .sampler import DPMSolverSampler

__all__ = ["DPM_Solver", "NoiseScheduleVP", "model_wrapper", "DPMSolverSampler"]
