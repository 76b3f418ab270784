"""Config-driven construction: ``target`` + ``params`` nodes become objects, as in the original.

A config the user did not name (one found beside a downloaded checkpoint) is untrusted: inside
:func:`only_model_targets` every ``target`` must be a model class of ``ldm`` (under
:data:`MODEL_PACKAGES`) or one of a few torch building blocks (:data:`TORCH_BUILDING_BLOCKS`);
anything else (``subprocess.run``, ``os.system``, a function of ours that writes files) is refused
before it is imported. A config the user names (``--config``, ``main.py --base``) is their own code,
as in the original (docs/SECURITY.md).

Original configs also name classes of packages ldm does not ship (taming-transformers'
``taming.data.faceshq.*`` and ``VQLPIPSWithDiscriminator``, torchvision's transforms):
:data:`ORIGINAL_TARGET_ALIASES` maps each such path to the ldm class that stands in for it, and
every lookup of a target goes through that table first (:func:`resolve_target_alias`).
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, List, Optional

from ldm.util.errors import UntrustedConfigError, first_line

# Where the classes an untrusted config may build live: the models and their building blocks.
MODEL_PACKAGES = ("ldm.models.", "ldm.modules.", "ldm.lr_scheduler.")
# torch classes the original configs name as parts of models.
TORCH_BUILDING_BLOCKS = frozenset({
    "torch.nn.Identity", "torch.nn.Linear", "torch.nn.Conv2d", "torch.nn.GroupNorm", "torch.nn.LayerNorm",
    "torch.nn.Dropout", "torch.nn.SiLU", "torch.nn.GELU",
})

# Third-party class paths the original configs name -> the ldm class that implements them.
ORIGINAL_TARGET_ALIASES = {
    **{f"taming.data.faceshq.{name}": f"ldm.data.faceshq.{name}" for name in (
        "CelebAHQTrain", "CelebAHQValidation", "FFHQTrain", "FFHQValidation", "FacesHQTrain", "FacesHQValidation")},
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator":
        "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    **{f"torchvision.transforms.{name}": f"ldm.data.transforms.{name}" for name in (
        "Resize", "RandomCrop", "CenterCrop")},
}

# Bounds on a config file the user did not name, before OmegaConf reads it.
MAX_UNTRUSTED_YAML_BYTES = 1 << 20
MAX_UNTRUSTED_YAML_NODES = 100_000

# Set inside only_model_targets: where the untrusted config came from (for messages).
_UNTRUSTED_SOURCE: ContextVar[Optional[str]] = ContextVar("untrusted_config_source", default=None)


def resolve_target_alias(target: Any) -> Any:
    """The ldm class path that stands in for ``target`` (itself when it is not an alias)."""
    return ORIGINAL_TARGET_ALIASES.get(target, target) if isinstance(target, str) else target


def is_model_target(target: Any) -> bool:
    """Whether an untrusted config may name ``target`` (judged from the string, before import)."""
    target = resolve_target_alias(target)
    return isinstance(target, str) and (target in TORCH_BUILDING_BLOCKS or (
        target.startswith(MODEL_PACKAGES) and all(part.isidentifier() for part in target.split("."))))


def config_targets(node: Any) -> List[str]:
    """Every ``target`` value in a config tree (OmegaConf nodes resolved), in order."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    found: List[str] = []
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if "target" in item:
                found.append(item["target"] if isinstance(item["target"], str) else repr(item["target"]))
            pending.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            pending.extend(reversed(item))
    return found


def non_model_targets(node: Any) -> List[str]:
    """The targets of ``node`` that an untrusted config could not build (see :func:`is_model_target`)."""
    return list(dict.fromkeys(t for t in config_targets(node) if not is_model_target(t)))


@contextmanager
def only_model_targets(source: str) -> Iterator[None]:
    """Within this block :func:`get_obj_from_str` (and so :func:`instantiate_from_config`) serves only
    model classes; ``source`` names the untrusted config in the error."""
    token = _UNTRUSTED_SOURCE.set(source)
    try:
        yield
    finally:
        _UNTRUSTED_SOURCE.reset(token)


def _refuse(source: str, target: str) -> UntrustedConfigError:
    return UntrustedConfigError(
        f"{source} names {target}, which is not a model class of ldm; refusing to build it (a config you "
        "did not name may build only ldm model classes). If you trust this file, pass it with --config")


def get_obj_from_str(string: str, reload: bool = False):
    """Import ``package.module.Name`` and return ``Name`` (inside :func:`only_model_targets`: a model
    class only, checked before anything is imported). An alias of :data:`ORIGINAL_TARGET_ALIASES`
    gives the ldm class it stands for."""
    source = _UNTRUSTED_SOURCE.get()
    if source is not None and (reload or not is_model_target(string)):
        raise _refuse(source, string)
    string = resolve_target_alias(string)
    module, cls = string.rsplit(".", 1)
    if reload:
        importlib.reload(importlib.import_module(module))
    obj = getattr(importlib.import_module(module, package=None), cls)
    if source is not None and string not in TORCH_BUILDING_BLOCKS and not (
            isinstance(obj, type) and f"{obj.__module__}.".startswith(MODEL_PACKAGES)):
        raise _refuse(source, f"{string} ({type(obj).__name__} from {getattr(obj, '__module__', '?')})")
    return obj


def check_untrusted_yaml(path: str) -> None:
    """Refuse a YAML file too large, too deep or expanding too far to read safely: YAML aliases
    (``&a`` / ``*a``) let a few hundred bytes stand for billions of nodes once OmegaConf copies
    them (the "billion laughs"), and a node may even contain itself."""
    import os

    import yaml

    if os.path.getsize(path) > MAX_UNTRUSTED_YAML_BYTES:
        raise UntrustedConfigError(f"{path} is larger than a config ({os.path.getsize(path)} bytes); refusing it")
    try:
        with open(path, "rb") as handle:
            root = yaml.compose(handle, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, UnicodeDecodeError) as err:
        raise UntrustedConfigError(f"{path}: not a readable YAML config ({first_line(err)})") from None
    if _expanded_size(root) > MAX_UNTRUSTED_YAML_NODES:
        raise UntrustedConfigError(f"{path} expands to more than {MAX_UNTRUSTED_YAML_NODES} entries through "
                                   "YAML aliases; refusing it")


def _expanded_size(root: Any) -> int:
    """Nodes of a composed YAML tree once every alias is copied, counted without copying; a node
    that contains itself counts as too many."""
    import yaml

    sizes: dict = {}
    pending = [(root, False)] if root is not None else []
    on_path: set = set()
    while pending:
        node, children_done = pending.pop()
        if id(node) in sizes and not children_done:
            continue
        children = ([item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode) else
                    list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), MAX_UNTRUSTED_YAML_NODES + 1)
            continue
        if id(node) in on_path:
            return MAX_UNTRUSTED_YAML_NODES + 1
        on_path.add(id(node))
        pending.append((node, True))
        pending.extend((child, False) for child in children if id(child) not in sizes)
    return sizes.get(id(root), 0)


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
