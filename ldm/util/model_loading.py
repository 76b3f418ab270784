"""The one ``load_model_from_config(config, ckpt, device)`` every script and tool uses."""
from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from ldm.util.checkpoints import load_checkpoint
from ldm.util.config import instantiate_from_config, non_model_targets, only_model_targets
from ldm.util.devices import pick_device
from ldm.util.errors import UntrustedConfigError
from ldm.util.file_pages import FileMappedPages
from ldm.util.meta_init import no_random_init_on_meta
from ldm.util.paths import in_cwd_or_repository
from ldm.util.state_dicts import fit_state_dict, load_state_dict_checked, select_ema_weights, usable_tensors


def load_model_from_config(config, ckpt: Optional[str], device=None, verbose: bool = True,
                           ema: Optional[bool] = None, strict: bool = True,
                           untrusted_source: Optional[str] = None,
                           retype: Optional[Callable[[nn.Module], None]] = None) -> nn.Module:
    """Build the model of ``config`` (a full config or its ``model`` node), load ``ckpt`` into it,
    move it to ``device`` (auto-selected when None) and set eval mode.

    The checkpoint is read (and checked) first, memory-mapped. The model is then built with its
    parameters on the meta device (:func:`parameters_on_meta`: no weights allocated, no random
    initialisation run; buffers are computed as usual), its layout compared with the checkpoint,
    and the checkpoint's tensors put in place of the parameters, each cast once to the dtype the
    model gives it (none when they agree: a float32 file then backs a float32 model with no
    copy). When the checkpoint does not hold every parameter (``strict=False`` with missing
    weights, a first stage that loads its own ``ckpt_path``) or the model cannot be built that
    way, it is built and loaded as before: initialised, then the checkpoint copied in.

    Mismatches are reported per component in plain words: with ``strict``, any missing, unused,
    mis-shaped or non-float (where the model has floats) tensor raises
    :class:`~ldm.util.errors.CheckpointMismatchError` before anything the constructors print is
    shown; a file that cannot be read, :class:`~ldm.util.errors.CheckpointError`. ``ema=True``
    loads the EMA shadows into the UNet (when the file has them), ``ema=False`` or None the plain
    weights.

    ``retype(model)`` changes the dtype of some of the model's parameters (bfloat16 weights for CPU
    autocast, :func:`ldm.inference.precision.autocast_weight_retyper`). It runs before the
    checkpoint's tensors are put in place, while the parameters are still on the meta device, so
    each retyped weight is cast once from the file's tensor and no float32 copy is ever made; on
    the fallback path it runs after loading.

    ``untrusted_source`` (a description such as "the config found beside x.ckpt") marks a config
    the user did not name: it may build only ldm's model classes
    (:func:`~ldm.util.config.only_model_targets`), else :class:`~ldm.util.errors.UntrustedConfigError`.
    """
    model_config = config.model if "model" in config else config
    model = None
    with _trust(model_config, untrusted_source):
        state_dict = None
        if ckpt is not None:
            state_dict, metadata = load_checkpoint(ckpt)
            if verbose and "global_step" in metadata:
                print(f"Global Step: {metadata['global_step']}")
            model = _build_with_checkpoint_tensors(model_config, state_dict, ema, strict, verbose, retype,
                                                   FileMappedPages(in_cwd_or_repository(ckpt)))
        built_without_the_file = model is None
        if built_without_the_file:
            model = instantiate_from_config(model_config)
    if state_dict:  # not consumed by the build above
        load_state_dict_checked(model, _chosen_weights(state_dict, model, ema), strict=strict, verbose=verbose)
    if built_without_the_file and retype is not None:  # the meta build retyped before putting the tensors in
        retype(model)
    model = model.to(pick_device(device) if not isinstance(device, torch.device) else device)
    model.eval()
    return model


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Models built inside have their parameters on the meta device (shapes and dtypes, no data;
    initialising them does nothing); buffers and other tensors are made as usual, so values
    computed at construction (noise schedules, position ids, masks) are right whether or not a
    checkpoint holds them."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
        if type(param) is nn.Parameter and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _build_with_checkpoint_tensors(model_config, state_dict: Dict[str, torch.Tensor], ema: Optional[bool],
                                   strict: bool, verbose: bool, retype: Optional[Callable[[nn.Module], None]],
                                   pages: FileMappedPages) -> Optional[nn.Module]:
    """The model built with :func:`parameters_on_meta` holding the checkpoint's tensors, or None
    (``state_dict`` untouched) when that cannot give every parameter a value: the caller then
    builds and loads it as before. On success ``state_dict`` is emptied, so that no tensor of the
    file outlives its cast. With ``strict`` a checkpoint that does not fit raises
    :class:`~ldm.util.errors.CheckpointMismatchError`. ``retype`` as in :func:`load_model_from_config`;
    ``pages``: the file's mappings, whose pages each cast read are given back."""
    printed = io.StringIO()
    try:
        with parameters_on_meta(), no_random_init_on_meta(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(printed):
            warnings.filterwarnings("ignore", message=".*to a meta parameter.*is a no-op")  # see below
            model = instantiate_from_config(model_config)
    except Exception:  # noqa: BLE001 - the usual build reports whatever is wrong with the config
        return None
    fitted, report = fit_state_dict(model, _chosen_weights(state_dict, model, ema), strict=strict)
    usable = usable_tensors(model, fitted)
    # A part that loaded its own weights at construction (a first stage's ckpt_path) copied them
    # into meta parameters, which does nothing: it is among the parameters left without a value.
    if any(tensor.is_meta and name not in usable for name, tensor in _named_tensors(model)):
        return None
    sys.stdout.write(printed.getvalue())
    if verbose:
        for line in report.lines():
            print(line)
    state_dict.clear()
    fitted.clear()
    if retype is not None:
        retype(model)
    model.load_state_dict(_cast_to_model_dtypes(model, usable, pages), strict=False, assign=True)
    return model


def _named_tensors(model: nn.Module) -> Iterator[Tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _cast_to_model_dtypes(model: nn.Module, tensors: Dict[str, torch.Tensor],
                          pages: FileMappedPages) -> Dict[str, torch.Tensor]:
    """``tensors`` (emptied as it goes, so each source is dropped once cast), each float cast to
    the dtype of the model's tensor it replaces, in one pass; integer buffers (position ids) are
    left to the modules' load hooks. The pages of a source the cast read are given back (a
    ``.ckpt`` is one mapping, which dropping a tensor does not release)."""
    expected = model.state_dict(keep_vars=True)
    out = {}
    for key in list(tensors):
        tensor = tensors.pop(key)
        target = expected[key].dtype
        if tensor.is_floating_point() and expected[key].is_floating_point() and tensor.dtype != target:
            source, tensor = tensor, tensor.to(target)
            pages.give_back(source)
        out[key] = tensor.contiguous()
    return out


@contextlib.contextmanager
def _trust(model_config, untrusted_source: Optional[str]) -> Iterator[None]:
    """Nothing for a trusted config; for an untrusted one, refuse up front any target that is not
    a model class, and serve only model classes while it builds."""
    if untrusted_source is None:
        yield
        return
    outside = non_model_targets(model_config)
    if outside:
        raise UntrustedConfigError(
            f"{untrusted_source} names {outside[0]}, which is not a model class of ldm; refusing to build it "
            "(a config you did not name may build only ldm model classes). If you trust this file, pass it "
            "with --config")
    with only_model_targets(untrusted_source):
        yield


def _chosen_weights(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                    ema: Optional[bool]) -> Dict[str, torch.Tensor]:
    """The EMA shadows in the UNet with ``ema``; else the plain weights, without the EMA copies
    unless the model keeps one."""
    if ema:
        return select_ema_weights(state_dict, model)
    if not any(k.startswith("model_ema.") for k in model.state_dict()):
        return {k: v for k, v in state_dict.items() if not k.startswith("model_ema.")}
    return dict(state_dict)
