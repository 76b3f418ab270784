"""Matching a state dict to a model: renaming keys newer libraries write, comparing keys and
shapes per model component in plain words, choosing the EMA weights, and loading with a check."""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Tuple

import torch
import torch.nn as nn

from ldm.util.errors import CheckpointError, CheckpointMismatchError

_COMPONENT_NAMES = OrderedDict([
    ("model.diffusion_model.", "UNet"),
    ("model_ema.", "EMA weights"),
    ("first_stage_model.", "autoencoder"),
    ("cond_stage_model.", "conditioning encoder"),
    ("depth_model.", "depth estimator (MiDaS)"),
    ("low_scale_model.", "low-scale noise model"),
    ("embedder.", "image embedder"),
    ("noise_augmentor.", "noise augmentor"),
])

# Keys that carry nothing our modules need from a file: transformers < 4.31 saved CLIP's
# position_ids as a persistent buffer, later versions do not (our encoder recomputes it).
_BENIGN_SUFFIXES = ("embeddings.position_ids",)


def upgrade_legacy_keys(state_dict: Mapping[str, torch.Tensor],
                        expected: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Rename keys written by newer libraries to the original layout: transformers 5 saves
    ``CLIPTextModel`` without its ``text_model.`` level (``...transformer.embeddings...``)."""
    expected = set(expected)
    out = {}
    for key, value in state_dict.items():
        if key not in expected and ".transformer." in key:
            head, tail = key.split(".transformer.", 1)
            candidate = f"{head}.transformer.text_model.{tail}"
            if candidate in expected:
                key = candidate
        out[key] = value
    return out


def _component_of(key: str) -> str:
    for prefix, name in _COMPONENT_NAMES.items():
        if key.startswith(prefix):
            return f"{name} ({prefix.rstrip('.')})"
    return "top level (schedule buffers etc.)"


@dataclass
class StateDictReport:
    """What did not match when loading a state dict, grouped by model component."""
    missing: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    unexpected: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    mismatched: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    wrong_type: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    skipped: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.wrong_type)

    def lines(self) -> List[str]:
        out = []
        for title, groups in (("missing from the checkpoint", self.missing),
                              ("not used by the model", self.unexpected),
                              ("of the wrong shape", self.mismatched),
                              ("of a non-float type where the model has float weights", self.wrong_type)):
            for component, keys in groups.items():
                out.append(f"{component}: {len(keys)} tensors {title} (e.g. {keys[0]})")
        for reason, keys in self.skipped.items():
            out.append(f"skipped {len(keys)} checkpoint tensors: {reason}")
        return out


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                       skip_prefixes: Mapping[str, str] = None,
                       preloaded_prefixes: Iterable[str] = ()) -> StateDictReport:
    """Compare ``state_dict`` with ``model.state_dict()`` by key and shape. Keys under
    ``skip_prefixes`` may be in the file without a place in the model (reported as skipped);
    keys under ``preloaded_prefixes`` may be absent from the file (already loaded)."""
    skip_prefixes = dict(skip_prefixes or {})
    preloaded_prefixes = tuple(preloaded_prefixes)
    expected = model.state_dict()
    report = StateDictReport()
    for key, value in state_dict.items():
        if key not in expected:
            if key.endswith(_BENIGN_SUFFIXES):
                continue
            reason = next((r for p, r in skip_prefixes.items() if key.startswith(p)), None)
            if reason:
                report.skipped[reason].append(key)
            else:
                report.unexpected[_component_of(key)].append(key)
        elif tuple(expected[key].shape) != tuple(value.shape):
            report.mismatched[_component_of(key)].append(
                f"{key} {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        elif expected[key].is_floating_point() and not value.is_floating_point():
            report.wrong_type[_component_of(key)].append(f"{key} {str(value.dtype).replace('torch.', '')}")
    for key in expected:
        if key not in state_dict and not key.endswith(_BENIGN_SUFFIXES) and not key.startswith(preloaded_prefixes):
            report.missing[_component_of(key)].append(key)
    report.missing = dict(report.missing)
    report.unexpected = dict(report.unexpected)
    report.mismatched = dict(report.mismatched)
    report.wrong_type = dict(report.wrong_type)
    report.skipped = dict(report.skipped)
    return report


def select_ema_weights(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Replace the UNet weights of ``state_dict`` by its ``model_ema.*`` shadows (LitEma names the
    shadow of ``model.<name>`` as ``model_ema.<name without dots>``)."""
    ema = {k[len("model_ema."):]: v for k, v in state_dict.items() if k.startswith("model_ema.")}
    keep_ema_buffers = any(k.startswith("model_ema.") for k in model.state_dict())
    out = {k: v for k, v in state_dict.items() if keep_ema_buffers or not k.startswith("model_ema.")}
    replaced = 0
    for key in model.state_dict():
        if key.startswith("model.") and key[len("model."):].replace(".", "") in ema:
            out[key] = ema[key[len("model."):].replace(".", "")]
            replaced += 1
    if replaced == 0:
        raise CheckpointError("--ema was asked for, but the checkpoint holds no EMA weights "
                              "(no model_ema.* tensors)")
    return out


def fit_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                   strict: bool = True) -> Tuple[Dict[str, torch.Tensor], StateDictReport]:
    """``state_dict`` with legacy keys renamed for ``model``, and how it fits: by key, shape and
    kind of number (float weights only where the model has floats; integer buffers such as
    position ids may stay integer). ``model`` may live on the meta device: only its layout is read.
    With ``strict`` a mismatch raises :class:`~ldm.util.errors.CheckpointMismatchError` naming it
    per component."""
    skip = getattr(model, "checkpoint_skip_prefixes", lambda: {})()
    preloaded = getattr(model, "preloaded_prefixes", lambda: ())()
    state_dict = upgrade_legacy_keys(state_dict, model.state_dict().keys())
    report = compare_state_dict(model, state_dict, skip, preloaded)
    if strict and not report.ok:
        raise _mismatch_error(report)
    return state_dict, report


def _mismatch_error(report: StateDictReport) -> CheckpointMismatchError:
    return CheckpointMismatchError("the checkpoint does not fit the config: " + "; ".join(
        line for line in report.lines() if not line.startswith("skipped")))


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            strict: bool = True, verbose: bool = True) -> StateDictReport:
    """Load ``state_dict`` into ``model`` after comparing layouts (:func:`fit_state_dict`); with
    ``strict`` a mismatch raises :class:`~ldm.util.errors.CheckpointMismatchError`."""
    state_dict, report = fit_state_dict(model, state_dict, strict=False)
    if verbose:
        for line in report.lines():
            print(line)
    if strict and not report.ok:
        raise _mismatch_error(report)
    model.load_state_dict(usable_tensors(model, state_dict), strict=False)
    return report


def usable_tensors(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The entries of ``state_dict`` that ``model.load_state_dict`` can take: a key of the model,
    the same shape, and a float wherever the model has a float."""
    expected = model.state_dict()
    return {k: v for k, v in state_dict.items()
            if k in expected and tuple(expected[k].shape) == tuple(v.shape)
            and not (expected[k].is_floating_point() and not v.is_floating_point())}
