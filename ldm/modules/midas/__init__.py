"""MiDaS monocular depth estimation (Ranftl et al. 2020, "Towards Robust Monocular Depth
Estimation"; DPT: Ranftl et al. 2021, "Vision Transformers for Dense Prediction"), under the
module paths and parameter names of Stability's SD 2 copy (``ldm.modules.midas``), so that the
``depth_model.*`` tensors of ``512-depth-ema.ckpt`` and the standalone MiDaS ``.pt`` files load
unchanged. The backbones (timm's ViT and ViT-hybrid, torchvision's ResNeXt, gen-efficientnet's
EfficientNet-Lite) are written here with their libraries' parameter names: none of those
libraries is needed, and nothing is downloaded.

* :mod:`ldm.modules.midas.api`: ``MiDaSInference``, ``load_midas_transform``, ``load_model``
* :mod:`ldm.modules.midas.midas`: the networks (``DPTDepthModel``, ``MidasNet``, ``MidasNet_small``)
  and the input transforms
"""
