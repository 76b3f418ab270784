"""Kakao Brain's Karlo (unCLIP) under the module paths of Stability-AI/stablediffusion's
``ldm/modules/karlo/kakao``. Only the prior is here (text -> CLIP image embedding), which is what
Stable unCLIP-L needs for text-to-image; Karlo's own decoder and super-resolution models are not."""
