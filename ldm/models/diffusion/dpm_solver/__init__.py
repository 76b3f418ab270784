"""DPM-Solver(++) and the sampler that runs it on a LatentDiffusion model."""
from .sampler import DPMSolverSampler

__all__ = ["DPMSolverSampler"]
