"""Gaussian diffusion (guided-diffusion's formulation) and timestep respacing for Karlo."""
