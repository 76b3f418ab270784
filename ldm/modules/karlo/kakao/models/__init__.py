"""Karlo's models: the diffusion prior (:mod:`.prior_model`) and its CLIP (:mod:`.clip`)."""
