"""BSR image degradations for super-resolution training data (Zhang et al. 2021, BSRGAN), with the module and
function names of latent-diffusion: ``bsrgan``, ``bsrgan_light``, ``utils_image``."""
from ldm.modules.image_degradation.bsrgan import degradation_bsrgan_variant as degradation_fn_bsr
from ldm.modules.image_degradation.bsrgan_light import degradation_bsrgan_variant as degradation_fn_bsr_light

__all__ = ["degradation_fn_bsr", "degradation_fn_bsr_light"]
