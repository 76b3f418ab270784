"""The original ``ldm.modules.diffusionmodules.model``: the convolutional encoder/decoder of the
first-stage autoencoders (KL and VQ), their building blocks, the pixel-space DDPM UNet of Ho et
al. 2020, and the rescaling decoders, under the class paths configs name
(``ldm.modules.diffusionmodules.model.Encoder`` ...). Each idea lives in its own module:

* :mod:`~ldm.modules.diffusionmodules.conv_blocks`: timestep embedding, ``Normalize``, resampling,
  ``ResnetBlock``, the attention blocks and ``make_attn``;
* :mod:`~ldm.modules.diffusionmodules.encoder_decoder`: ``Encoder``, ``Decoder``, ``Model``;
* :mod:`~ldm.modules.diffusionmodules.rescalers`: ``SimpleDecoder``, ``UpsampleDecoder``,
  ``LatentRescaler``, ``MergedRescaleEncoder``/``Decoder``, ``Upsampler``, ``Resize``.

Module and parameter names follow the original so that released checkpoints load unchanged
(``encoder.down.0.block.0.conv1.weight`` ...). Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention`.
"""
from ldm.modules.diffusionmodules.conv_blocks import (
                                                      ATTENTION_TYPES,
                                                      AttnBlock,
                                                      Downsample,
                                                      LinAttnBlock,
                                                      MemoryEfficientAttnBlock,
                                                      Normalize,
                                                      ResnetBlock,
                                                      Upsample,
                                                      get_timestep_embedding,
                                                      make_attn,
                                                      nonlinearity,
)
from ldm.modules.diffusionmodules.encoder_decoder import Decoder, Encoder, Model
from ldm.modules.diffusionmodules.rescalers import (
                                                      LatentRescaler,
                                                      MergedRescaleDecoder,
                                                      MergedRescaleEncoder,
                                                      Resize,
                                                      SimpleDecoder,
                                                      UpsampleDecoder,
                                                      Upsampler,
)

__all__ = [
    "ATTENTION_TYPES", "get_timestep_embedding", "nonlinearity", "Normalize", "Upsample", "Downsample", "ResnetBlock",
    "AttnBlock", "MemoryEfficientAttnBlock", "LinAttnBlock", "make_attn", "Encoder", "Decoder", "Model",
    "SimpleDecoder", "UpsampleDecoder", "LatentRescaler", "MergedRescaleEncoder", "MergedRescaleDecoder",
    "Upsampler", "Resize",
]
