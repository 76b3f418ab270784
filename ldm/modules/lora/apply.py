"""Applying LoRA files to a model without touching its weights, and taking them off again.

Each LoRA layer hooks its target: a forward hook adds ``weight * scale * up(down(x))`` to the
output of a Linear or Conv2d (``down`` has the target's kernel, stride and padding, ``up`` is 1x1:
LoCon), so the base weights are neither copied nor changed. Where a model uses a weight without
calling its module (OpenCLIP's packed q/k/v ``in_proj_weight``, ``nn.MultiheadAttention``'s output
projection) a parametrization adds ``weight * scale * up @ down`` to the weight's rows on the fly.
Several LoRAs add up; :meth:`LoraHandle.remove` takes one off and gives back the exact original
modules (same parameter objects, same outputs bit for bit).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ldm.modules.lora.files import LoraError, read_lora_file
from ldm.modules.lora.formats import LoraLayer, parse_lora
from ldm.modules.lora.naming import COMPONENT_NAMES, TEXT_ENCODER, LoraTarget, lora_targets, underscored

_EXAMPLES = 3


class LoraHandle:
    """A LoRA file applied to a model: its ``weight`` (settable; 0 turns it off exactly), the
    model paths of the ``layers`` it changes, the file's ``unused_keys``, and :meth:`remove`.
    Usable as a context manager that removes it on exit."""

    def __init__(self, path: str, weight: float, layers: List[str], unused_keys: List[str],
                 counts: Dict[str, int], notes: Optional[List[str]] = None):
        self.path = path
        self.notes = list(notes or [])
        self.weight = weight
        self.layers = layers
        self.unused_keys = unused_keys
        self.counts = counts
        self._undo: List[Callable[[], None]] = []

    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise LoraError(f"the weight of LoRA {self.path} must be a finite number, got {value}")
        self._weight = value

    @property
    def applied(self) -> bool:
        return bool(self._undo)

    def report(self) -> List[str]:
        """What was applied and what the file holds that the model does not use, in plain words."""
        parts = ", ".join(f"{COMPONENT_NAMES[component]} {count}" for component, count in self.counts.items())
        lines = [f"LoRA {self.path}: {len(self.layers)} layers ({parts}) at weight {self.weight:g}"]
        if self.unused_keys:
            lines.append(f"LoRA {self.path}: {len(self.unused_keys)} tensors not used by the model "
                         f"(e.g. {', '.join(self.unused_keys[:_EXAMPLES])})")
        return lines + [f"LoRA {self.path}: {note}" for note in self.notes]

    def remove(self) -> None:
        """Take the LoRA off the model (again: nothing happens)."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "LoraHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _LoraBranch:
    """The ``down``/``up`` weights of one layer (cast to the dtype and device they meet) and its
    scale; the factor applied is the handle's weight times the scale."""

    def __init__(self, handle: LoraHandle, down: torch.Tensor, up: torch.Tensor, scale: float):
        self.handle, self.scale = handle, scale
        self._weights: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {
            (down.device, down.dtype): (down, up)}

    def factor(self) -> float:
        return self.handle.weight * self.scale

    def weights_like(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._weights:
            down, up = next(iter(self._weights.values()))
            self._weights = {key: (down.to(x.device, x.dtype), up.to(x.device, x.dtype))}
        return self._weights[key]


def _linear_term(module: nn.Linear, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.linear(F.linear(x, down), up)


def _conv_term(module: nn.Conv2d, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.conv2d(x, down, None, module.stride, module.padding, module.dilation), up)


def _output_hook(branch: _LoraBranch, term: Callable):
    """A forward hook adding ``factor * term(module, x, down, up)`` to the module's output."""
    def add_lora(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        factor = branch.factor()
        if factor == 0:
            return output
        down, up = branch.weights_like(inputs[0])
        return output + factor * term(module, inputs[0], down, up)
    return add_lora


class _WeightDeltas(nn.Module):
    """A parametrization: the weight plus ``factor * up @ down`` of every LoRA on it, each on its
    rows. The LoRA tensors are plain attributes, so the state dict gains no entries. ``order`` is
    the module's parameter order before, restored when the last LoRA comes off."""

    def __init__(self, order: List[str]):
        super().__init__()
        self.order = order
        self.branches: List[Tuple[_LoraBranch, Optional[Tuple[int, int]]]] = []

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        for branch, rows in self.branches:
            factor = branch.factor()
            if factor == 0:
                continue
            down, up = branch.weights_like(weight)
            delta = factor * (up @ down)
            if rows is not None:
                delta = F.pad(delta, (0, 0, rows[0], weight.shape[0] - rows[1]))
            weight = weight + delta
        return weight


def _weight_deltas(module: nn.Module, tensor: str) -> _WeightDeltas:
    """The module's :class:`_WeightDeltas` on ``tensor``, registered on first use."""
    if parametrize.is_parametrized(module, tensor):
        for existing in module.parametrizations[tensor]:
            if isinstance(existing, _WeightDeltas):
                return existing
    deltas = _WeightDeltas(list(module._parameters))
    parametrize.register_parametrization(module, tensor, deltas, unsafe=True)
    return deltas


def _remove_weight_deltas(module: nn.Module, tensor: str, deltas: _WeightDeltas) -> None:
    """Give ``module`` its own ``tensor`` back, in its place among the parameters (removing a
    parametrization registers the weight again, last), so the state dict reads as before."""
    parametrize.remove_parametrizations(module, tensor, leave_parametrized=False)
    if set(deltas.order) == set(module._parameters):
        for name in deltas.order:
            module._parameters[name] = module._parameters.pop(name)


def _attach(handle: LoraHandle, target: LoraTarget, branch: _LoraBranch) -> Callable[[], None]:
    """Hook ``branch`` onto ``target``; returns the function that takes it off."""
    if target.tensor is None:
        term = _conv_term if isinstance(target.module, nn.Conv2d) else _linear_term
        return target.module.register_forward_hook(_output_hook(branch, term)).remove
    module, tensor = target.module, target.tensor
    deltas = _weight_deltas(module, tensor)
    entry = (branch, target.rows)
    deltas.branches.append(entry)

    def detach() -> None:
        deltas.branches.remove(entry)
        if not deltas.branches:
            _remove_weight_deltas(module, tensor, deltas)
    return detach


def _shape_text(shape) -> str:
    return "x".join(str(n) for n in shape)


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution kernel (out, in, 1, 1) as the matrix (out, in) it is."""
    return tensor.reshape(tensor.shape[:2]) if tensor.dim() == 4 and tuple(tensor.shape[2:]) == (1, 1) else tensor


def fit_to_target(layer: LoraLayer, target: LoraTarget) -> Union[Tuple[torch.Tensor, torch.Tensor], str]:
    """``(down, up)`` shaped for ``target`` (a 1x1 convolution and a linear layer are the same
    maths, so a file may hold either shape), on its device and dtype; or why they do not fit."""
    shape = target.weight_shape
    out_features, in_features, kernel = shape[0], shape[1], tuple(shape[2:])
    spatial = kernel not in ((), (1, 1))
    down = layer.down if spatial else _as_matrix(layer.down)
    up = _as_matrix(layer.up)
    down_kernel = kernel if spatial else ()
    fits = (up.dim() == 2 and tuple(down.shape[2:]) == down_kernel and down.dim() == 2 + len(down_kernel)
            and down.shape[1] == in_features and up.shape[0] == out_features and up.shape[1] == down.shape[0])
    if kernel:
        fits = fits and target.module.groups == 1 and target.module.padding_mode == "zeros"
    if not fits:
        return (f"{layer.name}: down {_shape_text(layer.down.shape)}, up {_shape_text(layer.up.shape)} "
                f"vs {target.path} {_shape_text(shape)}")
    if kernel:
        down = down if spatial else down[:, :, None, None]
        up = up[:, :, None, None]
    weight = getattr(target.module, target.tensor or "weight")
    return down.to(weight.device, weight.dtype), up.to(weight.device, weight.dtype)


def _match_layers(model: nn.Module, layers: List[LoraLayer]):
    """(target, layer) pairs, the keys of layers the model lacks, and shape mismatches."""
    tables = lora_targets(model)
    kohya_tables = {component: underscored(table) for component, table in tables.items()}
    matched, unused, mismatched = [], [], []
    for layer in layers:
        table = (kohya_tables if layer.underscored else tables).get(layer.component, {})
        target = table.get(layer.name)
        if target is None:
            unused.extend(layer.keys)
            continue
        fitted = fit_to_target(layer, target)
        if isinstance(fitted, str):
            mismatched.append(fitted)
        else:
            matched.append((target, layer, fitted))
    return tables, matched, unused, mismatched


def _missing_text_encoder_notes(model: nn.Module, tables: Dict[str, Dict[str, LoraTarget]],
                                layers: List[LoraLayer]) -> List[str]:
    """Why a file's text-encoder layers went unused when the model has a text encoder that is not
    one LoRA files can name (the shapes models' ShapesTextEncoder, a BERT encoder, ...)."""
    encoder = getattr(model, "cond_stage_model", None)
    count = sum(layer.component == TEXT_ENCODER for layer in layers)
    if TEXT_ENCODER in tables or encoder is None or not count:
        return []
    layers_are = "layers are" if count > 1 else "layer is"
    return [f"its {count} text-encoder {layers_are} not used: the model's text encoder is {type(encoder).__name__}, "
            "not a CLIP text encoder of SD 1.x/2.x, which is what LoRA files name; only the UNet is changed"]


def apply_lora(model: nn.Module, path: str, weight: float = 1.0, verbose: bool = True) -> LoraHandle:
    """Apply the ``.safetensors`` LoRA file ``path`` (kohya-ss or diffusers/PEFT format) to the
    UNet and text encoder of ``model`` (a LatentDiffusion of SD 1.x/2.x, or a UNetModel or text
    encoder alone) at ``weight``, without changing its weights. Returns the :class:`LoraHandle`
    that removes it. With ``verbose``, prints what was applied and what of the file is unused.

    Raises :class:`~ldm.modules.lora.files.LoraError` (one line) for an unreadable file, a file
    none of whose layers is in the model, or layers of the wrong shape (nothing is applied then).
    """
    lora = read_lora_file(path)
    try:
        parsed = parse_lora(lora.state_dict, lora.metadata)
    except LoraError as err:
        raise LoraError(f"{path}: {err}") from None
    tables, matched, unused, mismatched = _match_layers(model, parsed.layers)
    if mismatched:
        raise LoraError(f"{path} does not fit the model: {len(mismatched)} LoRA layers of the wrong shape "
                        f"(e.g. {mismatched[0]}); is it made for another base model (SD 1.x vs 2.x)?")
    if not matched:
        parts = " and ".join(COMPONENT_NAMES[c] for c in tables) or "no UNet or text encoder"
        examples = ", ".join(list(lora.state_dict)[:_EXAMPLES])
        raise LoraError(f"{path} matches no layer of the model ({parts}): none of its {len(lora.state_dict)} "
                        f"tensors names one (e.g. {examples})")
    counts = {component: sum(layer.component == component for _, layer, _ in matched) for component in tables}
    handle = LoraHandle(path, weight, [target.path for target, _, _ in matched],
                        parsed.unknown_keys + unused, {c: n for c, n in counts.items() if n},
                        _missing_text_encoder_notes(model, tables, parsed.layers))
    for target, layer, (down, up) in matched:
        handle._undo.append(_attach(handle, target, _LoraBranch(handle, down, up, layer.scale)))
    if verbose:
        for line in handle.report():
            print(line)
    return handle
