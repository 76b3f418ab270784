"""Config-driven construction: ``target`` + ``params`` nodes become objects, as in the original."""
from __future__ import annotations

import importlib


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
