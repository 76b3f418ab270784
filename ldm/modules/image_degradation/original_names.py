"""The building blocks that ``bsrgan`` and ``bsrgan_light`` both expose under the original module
names (the originals define them twice; here they live in ``degradations`` and ``kernels``)."""
from ldm.modules.image_degradation.degradations import (
    add_Gaussian_noise,
    add_Poisson_noise,
    add_resize,
    add_sharpening,
    add_speckle_noise,
    bicubic_degradation,
    classical_degradation,
    dpsr_degradation,
    modcrop_np,
    random_crop,
    srmd_degradation,
)
from ldm.modules.image_degradation.kernels import (
    analytic_kernel,
    anisotropic_Gaussian,
    blur,
    fspecial,
    fspecial_gaussian,
    fspecial_laplacian,
    gen_kernel,
    gm_blur_kernel,
    shift_pixel,
)

__all__ = [
    "add_Gaussian_noise",
    "add_Poisson_noise",
    "add_resize",
    "add_sharpening",
    "add_speckle_noise",
    "bicubic_degradation",
    "classical_degradation",
    "dpsr_degradation",
    "modcrop_np",
    "random_crop",
    "srmd_degradation",
    "analytic_kernel",
    "anisotropic_Gaussian",
    "blur",
    "fspecial",
    "fspecial_gaussian",
    "fspecial_laplacian",
    "gen_kernel",
    "gm_blur_kernel",
    "shift_pixel",
]
