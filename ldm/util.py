"""Config-driven construction and the one checkpoint loader/saver used everywhere."""
from __future__ import annotations

import importlib
import os
import re
import tempfile
import warnings
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from inspect import isfunction
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Small helpers the original exposes
# ---------------------------------------------------------------------------------------------
def exists(x) -> bool:
    return x is not None


def default(val, d):
    """``val`` if it is not None, else ``d`` (called first when it is a function)."""
    if exists(val):
        return val
    return d() if isfunction(d) else d


def ismap(x) -> bool:
    return isinstance(x, torch.Tensor) and len(x.shape) == 4 and x.shape[1] > 3


def isimage(x) -> bool:
    return isinstance(x, torch.Tensor) and len(x.shape) == 4 and x.shape[1] in (1, 3)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return tensor.mean(dim=list(range(1, len(tensor.shape))))


def count_params(model: nn.Module, verbose: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1.e-6:.2f} M params.")
    return total


def log_txt_as_img(wh: Tuple[int, int], xc: List[str], size: int = 10) -> torch.Tensor:
    """Render captions as images (B, 3, H, W) in [-1, 1], wrapped at 40 chars per 256 px."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(1, int(size))
    images = []
    chars_per_line = int(40 * (wh[0] / 256))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        font = ImageFont.load_default()
    for caption in xc:
        canvas = Image.new("RGB", wh, color="white")
        draw = ImageDraw.Draw(canvas)
        text = str(caption)
        lines = "\n".join(text[i:i + chars_per_line] for i in range(0, len(text), chars_per_line))
        draw.text((0, 0), lines, fill="black", font=font)
        arr = np.array(canvas).transpose(2, 0, 1) / 127.5 - 1.0
        images.append(arr)
    return torch.tensor(np.stack(images), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Config instantiation
# ---------------------------------------------------------------------------------------------
def get_obj_from_str(string: str, reload: bool = False):
    """Import ``package.module.Name`` and return ``Name``."""
    module, cls = string.rsplit(".", 1)
    if reload:
        importlib.reload(importlib.import_module(module))
    return getattr(importlib.import_module(module, package=None), cls)


def instantiate_from_config(config):
    """Build ``target(**params)`` from a config node, as the original does.

    The strings ``__is_first_stage__`` and ``__is_unconditional__`` stand for "no module"
    and give None; params are passed on as OmegaConf nodes, unchanged.
    """
    if "target" not in config:
        if config == "__is_first_stage__" or config == "__is_unconditional__":
            return None
        raise KeyError("Expected key `target` to instantiate.")
    return get_obj_from_str(config["target"])(**config.get("params", dict()))


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


class _InertPickledName:
    """Stands in for a class that old Lightning checkpoints name as a dict key (for example the
    ModelCheckpoint class in ``callbacks``). It is never called; it only lets such files load
    with ``weights_only=True`` without importing or running anything."""


# Names that released Stable Diffusion / Lightning checkpoints reference in their pickles
# outside of the tensors. All are mapped to inert placeholders: nothing of them is executed.
_INERT_PICKLE_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


def _numpy_globals() -> list:
    """numpy objects that Lightning callback states hold (scores, arrays). numpy 1.x pickles them
    under ``numpy.core``, numpy 2.x under ``numpy._core``: allow both spellings."""
    core = getattr(np, "_core", None) or np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    names: list = [np.ndarray, np.dtype]
    for module in ("numpy.core", "numpy._core"):
        names += [(reconstruct, f"{module}.multiarray._reconstruct"),
                  (scalar, f"{module}.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return names


def _safe_globals() -> list:
    return [(_InertPickledName, name) for name in _INERT_PICKLE_NAMES] + _numpy_globals()


def _describe_load_failure(path: str, err: Exception) -> str:
    text = str(err)
    blocked = re.search(r"GLOBAL (\S+)", text)
    if blocked:
        return (f"{path} holds pickled Python objects that are not plain tensors ({blocked.group(1)}); refusing "
                "to load it (it could run code). Convert it to .safetensors with a trusted tool, or "
                "re-save only its state_dict.")
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return (f"cannot read checkpoint {path}: the file is corrupted, truncated or not a checkpoint "
            f"({first_line[:120]})")


def _load_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            raw_meta = handle.metadata() or {}
        state_dict = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(_describe_load_failure(path, err)) from None
    metadata: Dict[str, Any] = {}
    for key, value in raw_meta.items():
        metadata[key] = int(value) if key in ("global_step", "epoch") and value.lstrip("-").isdigit() else value
    return state_dict, metadata


def _torch_load_safely(path: str, mmap: bool) -> Any:
    with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "pickle protocol N" notes on odd files
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _load_torch(path: str, mmap: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    try:
        try:
            obj = _torch_load_safely(path, mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = _torch_load_safely(path, False)  # legacy (non-zip) files cannot be memory-mapped
    except Exception as err:  # UnpicklingError, zip errors, EOF, ...: all mean "cannot use this file"
        raise CheckpointError(_describe_load_failure(path, err)) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    metadata = {k: v for k, v in obj.items() if k in ("global_step", "epoch")}
    state_dict = obj["state_dict"] if isinstance(obj.get("state_dict"), Mapping) else obj
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors, metadata


def _readable_checkpoint_path(path: str) -> str:
    """``path`` (see ``in_cwd_or_repository``) if it is a non-empty file, else CheckpointError."""
    path = in_cwd_or_repository(os.fspath(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    return path


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a ``.safetensors`` or ``.ckpt``/``.pt``/``.pth``/``.bin`` file safely.

    Returns ``(state_dict, metadata)``: the tensors (unwrapped from a ``state_dict`` entry when
    present) and whatever of ``global_step`` / ``epoch`` (or safetensors metadata) the file has.
    Raises :class:`CheckpointError` with a one-line reason for a missing, corrupted or unsafe file.
    """
    path = _readable_checkpoint_path(path)
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    return _load_torch(path)


def checkpoint_tensor_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors, read without loading their data where the
    format allows (the safetensors header; a ``.ckpt`` memory-mapped), e.g. to tell which config
    fits a file before loading it for real. Raises :class:`CheckpointError` as ``load_checkpoint``."""
    path = _readable_checkpoint_path(path)
    if path.endswith(".safetensors"):
        return _safetensors_shapes(path)
    tensors, _ = _load_torch(path, mmap=True)
    return {key: tuple(value.shape) for key, value in tensors.items()}


def _safetensors_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(_describe_load_failure(path, err)) from None


def in_cwd_or_repository(path: str) -> str:
    """A relative path that does not exist from the working directory is looked up from the
    repository root too, so configs naming ``checkpoints/...`` (the shipped models) work from
    anywhere."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repository = os.path.join(REPOSITORY_ROOT, path)
    return in_repository if os.path.exists(in_repository) else path


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(temp_path)`` on a temporary file beside ``path``, flush it to disk, then rename
    it over ``path``: readers see the old file or the complete new one, never a partial write.
    The file gets the permissions a plain ``open`` would give it (umask), not the temp file's 0600."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str,
                    metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Write a state dict as ``.safetensors`` (by extension) or as a ``.ckpt`` with the original
    ``{"state_dict": ...}`` container, atomically (:func:`write_atomically`)."""
    path = os.fspath(path)
    metadata = dict(metadata or {})
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()}))
    else:
        write_atomically(path, lambda tmp: torch.save({"state_dict": OrderedDict(state_dict), **metadata}, tmp))


# ---------------------------------------------------------------------------------------------
# Matching a state dict to a model
# ---------------------------------------------------------------------------------------------
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
    skipped: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self) -> List[str]:
        out = []
        for title, groups in (("missing from the checkpoint", self.missing),
                              ("not used by the model", self.unexpected),
                              ("of the wrong shape", self.mismatched)):
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
    for key in expected:
        if key not in state_dict and not key.endswith(_BENIGN_SUFFIXES) and not key.startswith(preloaded_prefixes):
            report.missing[_component_of(key)].append(key)
    report.missing = dict(report.missing)
    report.unexpected = dict(report.unexpected)
    report.mismatched = dict(report.mismatched)
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


def _device_available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return True


_DEVICE_PREFERENCE = ("cuda", "mps", "cpu")


def pick_device(device: Optional[str] = None) -> torch.device:
    """The requested device, or the best available one (CUDA, then MPS, then CPU)."""
    if device in (None, "auto"):
        return torch.device(next(kind for kind in _DEVICE_PREFERENCE if _device_available(kind)))
    requested = torch.device(device)
    if not _device_available(requested.type):
        raise RuntimeError(f"--device {device} was asked for, but {requested.type.upper()} "
                           "is not available on this machine")
    return requested


def load_model_from_config(config, ckpt: Optional[str], device=None, verbose: bool = True,
                           ema: Optional[bool] = None, strict: bool = True) -> nn.Module:
    """Build the model of ``config`` (a full config or its ``model`` node), load ``ckpt`` into it,
    move it to ``device`` (auto-selected when None) and set eval mode.

    Mismatches are reported per component in plain words; with ``strict`` any missing, unused
    or mis-shaped tensor raises :class:`CheckpointError`. ``ema=True`` loads the EMA shadows
    into the UNet (when the file has them), ``ema=False`` or None the plain weights.
    """
    model_config = config.model if "model" in config else config
    model = instantiate_from_config(model_config)
    if ckpt is not None:
        state_dict, metadata = load_checkpoint(ckpt)
        if verbose and "global_step" in metadata:
            print(f"Global Step: {metadata['global_step']}")
        if ema:
            state_dict = select_ema_weights(state_dict, model)
        elif not any(k.startswith("model_ema.") for k in model.state_dict()):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("model_ema.")}
        load_state_dict_checked(model, state_dict, strict=strict, verbose=verbose)
    model = model.to(pick_device(device) if not isinstance(device, torch.device) else device)
    model.eval()
    return model


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                            strict: bool = True, verbose: bool = True) -> StateDictReport:
    """Load ``state_dict`` into ``model`` after comparing layouts; raise on a mismatch when strict."""
    skip = getattr(model, "checkpoint_skip_prefixes", lambda: {})()
    preloaded = getattr(model, "preloaded_prefixes", lambda: ())()
    state_dict = upgrade_legacy_keys(state_dict, model.state_dict().keys())
    report = compare_state_dict(model, state_dict, skip, preloaded)
    if verbose:
        for line in report.lines():
            print(line)
    if strict and not report.ok:
        raise CheckpointError("the checkpoint does not fit the config: " + "; ".join(
            line for line in report.lines() if not line.startswith("skipped")))
    expected = model.state_dict()
    usable = {k: v for k, v in state_dict.items()
              if k in expected and tuple(expected[k].shape) == tuple(v.shape)}
    model.load_state_dict(usable, strict=False)
    return report
