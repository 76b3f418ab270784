"""Autoencoder training losses (original class paths: ``ldm.modules.losses.LPIPSWithDiscriminator``,
``ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator``)."""
from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator
from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

__all__ = ["LPIPSWithDiscriminator", "VQLPIPSWithDiscriminator"]
