"""BSR image degradations for super-resolution training data (Zhang et al. 2021, "Designing a Practical
Degradation Model for Deep Blind Image Super-Resolution"), under latent-diffusion's module and function names:
``bsrgan`` (the paper's ranges), ``bsrgan_light`` (the lighter ranges of LDM's bsr_sr model), ``utils_image``.

Written with numpy, torch and Pillow only. Same random draws, in the same order, from Python's ``random`` and
NumPy's global generator, with the same probabilities and ranges as the originals. Deliberate differences:

* OpenCV's ``resize`` / ``GaussianBlur``, SciPy's ``ndimage.convolve`` / ``interp2d`` / ``linalg.orth`` and
  ``multivariate_normal.pdf`` are re-implemented (resampling.py, filters.py, kernels.py) and agree with them to
  float rounding (float64 arithmetic here); JPEG goes through Pillow's libjpeg at the same quality and 4:2:0
  subsampling, so compressed bytes can differ slightly from OpenCV's encoder.
* Gaussian kernels are normalised in log space: a very narrow even-sized kernel is the box over its nearest
  samples, where the originals return an all-zero kernel (``fspecial_gaussian``: a black image) or NaN.
* The pipelines mod-crop each axis to a multiple of sf (the originals swap H and W there, which crops
  non-square images wrongly), and a resize to 0 pixels becomes 1 pixel (OpenCV raises).
* ``degradation_bsrgan_variant`` checks for a uint8 HxWx3 image; numpy's warning about the non-PSD noise
  covariance of the correlated-noise branch is silenced (the draws are unchanged).
"""
from ldm.modules.image_degradation.bsrgan import degradation_bsrgan_variant as degradation_fn_bsr
from ldm.modules.image_degradation.bsrgan_light import degradation_bsrgan_variant as degradation_fn_bsr_light

__all__ = ["degradation_fn_bsr", "degradation_fn_bsr_light"]
