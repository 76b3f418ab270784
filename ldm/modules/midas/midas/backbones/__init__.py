"""The image backbones MiDaS takes from timm, torchvision and gen-efficientnet, written here with
those libraries' parameter names so their weights load unchanged:

* :mod:`.padding`: TensorFlow "SAME" padding (convolutions and max pooling)
* :mod:`.resnetv2`: timm's ResNetV2 with weight-standardised convolutions (the ViT-hybrid stem)
* :mod:`.vision_transformer`: timm's VisionTransformer (ViT-B/16, ViT-L/16, ViT-B/16 + ResNet-50)
* :mod:`.resnext`: torchvision's ResNeXt-101 32x8d (MiDaS v2.1)
* :mod:`.efficientnet_lite`: gen-efficientnet's EfficientNet-Lite3 (MiDaS v2.1 small)
"""
