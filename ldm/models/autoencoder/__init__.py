"""First-stage autoencoders of latent diffusion, under the class paths the original configs name
(``ldm.models.autoencoder.AutoencoderKL`` ...): the KL-regularised ``AutoencoderKL`` (Stable
Diffusion's VAE), the vector-quantised ``VQModel`` / ``VQModelInterface`` of the LDM paper
(Rombach et al. 2022, sec. 3.1) and ``IdentityFirstStage``. One module per idea:
:mod:`.base` (what KL and VQ share: checkpoints, EMA, the GAN training step), :mod:`.kl`,
:mod:`.vq`, :mod:`.identity`, :mod:`.tiling` (tiled encoding/decoding of large inputs).

Training uses Lightning's manual optimization: each batch takes one autoencoder step and, when
the loss has a ``discriminator``, one discriminator step, as the original's two optimizers did.
The loss is called with the original convention
``loss(inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer=..., split=...)``
(VQ: ``loss(codebook_loss, inputs, reconstructions, optimizer_idx, global_step, ...)``).
"""
from ldm.models.autoencoder.identity import IdentityFirstStage
from ldm.models.autoencoder.kl import AutoencoderKL
from ldm.models.autoencoder.vq import VQModel, VQModelInterface

__all__ = ["AutoencoderKL", "VQModel", "VQModelInterface", "IdentityFirstStage"]
