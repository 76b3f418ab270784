"""The one ``load_model_from_config(config, ckpt, device)`` every script and tool uses."""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Dict, Iterator, Mapping, Optional

import torch
import torch.nn as nn

from ldm.util.checkpoints import load_checkpoint
from ldm.util.config import instantiate_from_config, non_model_targets, only_model_targets
from ldm.util.devices import pick_device
from ldm.util.errors import UntrustedConfigError
from ldm.util.meta_init import no_random_init_on_meta
from ldm.util.state_dicts import fit_state_dict, load_state_dict_checked, select_ema_weights


def load_model_from_config(config, ckpt: Optional[str], device=None, verbose: bool = True,
                           ema: Optional[bool] = None, strict: bool = True,
                           untrusted_source: Optional[str] = None) -> nn.Module:
    """Build the model of ``config`` (a full config or its ``model`` node), load ``ckpt`` into it,
    move it to ``device`` (auto-selected when None) and set eval mode.

    The checkpoint is read (and checked) first; with ``strict`` its layout is then compared with
    the model's built on the meta device (no weights allocated, no initialisation run), so a
    config that does not fit fails in seconds, before the real model is built. Mismatches are
    reported per component in plain words: any missing, unused, mis-shaped or non-float (where
    the model has floats) tensor raises :class:`~ldm.util.errors.CheckpointMismatchError`; a file
    that cannot be read, :class:`~ldm.util.errors.CheckpointError`. ``ema=True`` loads the EMA
    shadows into the UNet (when the file has them), ``ema=False`` or None the plain weights.

    ``untrusted_source`` (a description such as "the config found beside x.ckpt") marks a config
    the user did not name: it may build only ldm's model classes
    (:func:`~ldm.util.config.only_model_targets`), else :class:`~ldm.util.errors.UntrustedConfigError`.
    """
    model_config = config.model if "model" in config else config
    with _trust(model_config, untrusted_source):
        state_dict = None
        if ckpt is not None:
            state_dict, metadata = load_checkpoint(ckpt)
            if verbose and "global_step" in metadata:
                print(f"Global Step: {metadata['global_step']}")
            if strict:
                _check_layout_before_building(model_config, state_dict, ema)
        model = instantiate_from_config(model_config)
    if state_dict is not None:
        load_state_dict_checked(model, _chosen_weights(state_dict, model, ema), strict=strict, verbose=verbose)
    model = model.to(pick_device(device) if not isinstance(device, torch.device) else device)
    model.eval()
    return model


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


def _check_layout_before_building(model_config, state_dict: Mapping[str, torch.Tensor],
                                  ema: Optional[bool]) -> None:
    """Compare the checkpoint with the model's layout built on the meta device; raise
    :class:`~ldm.util.errors.CheckpointMismatchError` when it does not fit. A model that cannot
    be built on the meta device (construction that reads tensor values) is left to the real build.
    What constructors print is held back here (the real build prints it); warnings are not, so a
    constructor that says something once per process should warn rather than print."""
    try:
        with torch.device("meta"), no_random_init_on_meta(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*to a meta parameter.*is a no-op")  # preloaded parts
            skeleton = instantiate_from_config(model_config)
    except Exception:  # noqa: BLE001 - the real build reports whatever is wrong with the config
        return
    fit_state_dict(skeleton, _chosen_weights(state_dict, skeleton, ema), strict=True)
