"""Helpers every sampler shares: the one classifier-free-guidance wrapper, x0 thresholding,
seeded noise draws (one generator per image, so results do not depend on the batch size) and
the conditioning batch-size check."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append singleton dimensions to ``x`` until it has ``target_dims`` dimensions."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def norm_thresholding(x0: torch.Tensor, value: float) -> torch.Tensor:
    """Scale each sample so that its root-mean-square is at most ``value``."""
    rms = x0.pow(2).flatten(1).mean(1).sqrt().clamp(min=value)
    return x0 * (value / append_dims(rms, x0.ndim))


def spatial_norm_thresholding(x0: torch.Tensor, value: float) -> torch.Tensor:
    """Scale each pixel (over channels, input b c h w) so its RMS is at most ``value``."""
    rms = x0.pow(2).mean(1, keepdim=True).sqrt().clamp(min=value)
    return x0 * (value / rms)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------
def _cat_pair(uncond: Any, cond: Any, where: str) -> Any:
    if uncond is None and cond is None:
        return None
    if not (isinstance(uncond, torch.Tensor) and isinstance(cond, torch.Tensor)):
        raise ValueError(f"conditioning {where}: expected tensors for both the unconditional and "
                         f"conditional input, got {type(uncond).__name__} and {type(cond).__name__}")
    return torch.cat([uncond, cond])


def _cat_list(uncond: Any, cond: list, where: str) -> list:
    if not isinstance(uncond, (list, tuple)) or len(uncond) != len(cond):
        raise ValueError(f"conditioning {where}: the unconditional conditioning must be a list of "
                         f"{len(cond)} tensors like the conditional one")
    return [_cat_pair(u, c, f"{where}[{i}]") for i, (u, c) in enumerate(zip(uncond, cond))]


def concat_conditionings(uncond: Any, cond: Any) -> Any:
    """Batch ``[uncond, cond]`` (unconditional first, as the originals order it) for tensors,
    lists of tensors and dicts whose values are tensors or lists of tensors (``c_concat``,
    ``c_crossattn``, ``c_adm``)."""
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(uncond) != set(cond):
            raise ValueError(f"unconditional conditioning must be a dict with keys {sorted(cond)}")
        return {k: _cat_list(uncond[k], v, k) if isinstance(v, (list, tuple))
                else _cat_pair(uncond[k], v, k) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return _cat_list(uncond, cond, "list")
    return _cat_pair(uncond, cond, "tensor")


def guided_model_output(apply_model: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any,
                        unconditional_conditioning: Any = None,
                        guidance_scale: float = 1.0) -> torch.Tensor:
    """Model output with classifier-free guidance (Ho & Salimans 2022, eq. 6):
    ``u + s * (c - u)`` from one doubled batch ``[uncond, cond]``. With ``s == 1`` or no
    unconditional conditioning the model runs once on ``cond`` alone."""
    if unconditional_conditioning is None or guidance_scale == 1.:
        return apply_model(x, t, cond)
    c_in = concat_conditionings(unconditional_conditioning, cond)
    out_uncond, out_cond = apply_model(torch.cat([x] * 2), torch.cat([t] * 2), c_in).chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def warn_on_batch_mismatch(conditioning: Any, batch_size: int) -> None:
    """Print the original's warning when the conditioning batch differs from ``batch_size``."""
    if conditioning is None:
        return
    if isinstance(conditioning, dict):
        first = conditioning[list(conditioning.keys())[0]]
        while isinstance(first, (list, tuple)):
            first = first[0]
        tensors = [first]
    elif isinstance(conditioning, (list, tuple)):
        tensors = list(conditioning)
    else:
        tensors = [conditioning]
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.shape[0] != batch_size:
            print(f"Warning: Got {tensor.shape[0]} conditionings but batch-size is {batch_size}")


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------
def randn(shape: Sequence[int], generator: Generator = None, device=None,
          dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Standard normal noise of ``shape``.

    ``generator`` may be None (global RNG, the same draws as the original's ``torch.randn``),
    one ``torch.Generator``, or a list with one generator per batch element, so that image k
    gets the same noise whatever batch it is sampled in. Draws happen on the generator's device.
    """
    dtype = dtype or torch.float32
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=generator.device,
                           dtype=dtype).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; "
                         "pass one generator per batch element")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
                        .to(device) for g in generators])
