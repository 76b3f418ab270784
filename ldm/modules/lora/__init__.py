"""LoRA files on SD 1.x / 2.x models: kohya-ss and diffusers/PEFT ``.safetensors`` files applied to
the UNet and text encoder without copying or changing the base weights, several at once, each
removable (docs/LORA.md).

* :func:`apply_lora` (model, path, weight) -> :class:`LoraHandle` (``.remove()``, ``.weight``)
* :func:`load_lora_state_dict`, :func:`read_lora_file`: a LoRA file's tensors (and metadata)
* :func:`parse_lora_spec`: ``"FILE[:WEIGHT]"`` -> :class:`LoraSpec` (path, weight)
* :func:`unet_diffusers_names`, :func:`unet_state_dict_to_diffusers`: the ldm <-> diffusers UNet names
* :class:`LoraError`: a file that cannot be read or does not fit (a :class:`~ldm.util.CheckpointError`)
"""
from ldm.modules.lora.apply import LoraHandle, apply_lora
from ldm.modules.lora.files import LoraError, LoraFile, LoraSpec, load_lora_state_dict, parse_lora_spec, read_lora_file
from ldm.modules.lora.naming import lora_targets, unet_diffusers_names, unet_state_dict_to_diffusers

__all__ = ["apply_lora", "LoraHandle", "load_lora_state_dict", "read_lora_file", "LoraFile", "parse_lora_spec",
           "LoraSpec", "LoraError", "unet_diffusers_names", "unet_state_dict_to_diffusers", "lora_targets"]
