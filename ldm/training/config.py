"""Reading the training configuration: YAML files merged in order, then ``key=value`` overrides
from the command line, with one-line errors for every mistake a user can make."""
from __future__ import annotations

import importlib
import os
import re
from typing import Iterable, Iterator, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.util import first_line
from ldm.util.config import resolve_target_alias


class ConfigError(Exception):
    """A mistake in the command line or configuration; main.py prints it and exits with code 2."""


_DOTLIST_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+|\[\d+\])*$")


def load_yaml(path: str) -> DictConfig:
    """One YAML config file as a DictConfig."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        config = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"cannot parse {path}{where}: {getattr(err, 'problem', None) or err}") from None
    except (OmegaConfBaseException, OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {first_line(err)}") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{path} must hold a mapping (model:, data:, lightning:), not a {type(config).__name__}")
    return config


def parse_dotlist(items: Sequence[str]) -> DictConfig:
    """``a.b.c=value`` overrides (values parsed as YAML) as one DictConfig. An item without ``=``,
    with a malformed key or an unparsable value is an error, never silently ``None``."""
    overrides = OmegaConf.create()
    for item in items:
        if item.startswith("-"):
            raise ConfigError(f"unrecognized option {item.split('=', 1)[0]} (see --help)")
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"malformed override {item!r}: expected key=value, e.g. model.params.x=1")
        if not _DOTLIST_KEY.match(key):
            raise ConfigError(f"malformed override {item!r}: {key!r} is not a dotted key like model.params.x")
        try:
            overrides.merge_with_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as err:
            raise ConfigError(f"malformed override {item!r}: {first_line(err)}") from None
    return overrides


def merge_configs(configs: Iterable[DictConfig]) -> DictConfig:
    """Later configs override earlier ones key by key."""
    configs = list(configs)
    if not configs:
        return OmegaConf.create()
    try:
        return OmegaConf.merge(*configs)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot merge the configs: {first_line(err)}") from None


def iter_targets(node, path: str = "") -> Iterator[Tuple[str, str]]:
    """Every ``(config path, target)`` in a config tree."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node._get_node(key)
            child = f"{path}.{key}" if path else str(key)
            if key == "target" and isinstance(node.get(key), str):
                yield path or "<root>", node[key]
            elif isinstance(value, (DictConfig, ListConfig)):
                yield from iter_targets(value, child)
    elif isinstance(node, ListConfig):
        for index, value in enumerate(node):
            if isinstance(value, (DictConfig, ListConfig)):
                yield from iter_targets(value, f"{path}[{index}]")


def check_target(target: str, where: str) -> None:
    """Raise a ConfigError when ``target`` names no importable class or function. A module that
    exists but fails to import for another reason is a bug, not a config error: it propagates.
    A third-party path the original configs name is checked as the ldm class standing in for it."""
    module_name, _, attr = resolve_target_alias(target).rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"unknown target {target!r} in {where}: expected a dotted path like package.module.Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            from ldm.data import ORIGINAL_DATA_MODULES

            original = next((m for m in ORIGINAL_DATA_MODULES if module_name == m or module_name.startswith(m + ".")),
                            None)
            if original:
                raise ConfigError(f"{where}: {target} reads {ORIGINAL_DATA_MODULES[original]}, and ldm has no module "
                                  f"{original} yet; train on your own images (configs/examples/image-folder.yaml) "
                                  "or on the shapes world (configs/examples/)") from None
            raise ConfigError(f"unknown target {target!r} in {where}: there is no module {missing!r}") from None
        raise
    if not hasattr(module, attr):
        raise ConfigError(f"unknown target {target!r} in {where}: module {module_name!r} has no {attr!r}")


def check_targets(config: DictConfig, sections: Sequence[str] = ("model", "data", "lightning")) -> None:
    """Check every target of the given top-level sections before anything is built."""
    for section in sections:
        if section in config:
            for where, target in iter_targets(config[section], section):
                check_target(target, where)


def split_lightning(config: DictConfig) -> Tuple[DictConfig, DictConfig]:
    """``(config without its lightning section, lightning section)`` as the original does."""
    config = config.copy()
    lightning = config.pop("lightning", None) or OmegaConf.create()
    if not isinstance(lightning, DictConfig):
        raise ConfigError("the lightning: section must be a mapping (trainer:, callbacks:, logger:, modelcheckpoint:)")
    return config, lightning


def require_model(config: DictConfig) -> None:
    if "model" not in config or not isinstance(config.model, DictConfig) or "target" not in config.model:
        raise ConfigError("the config has no model: section with a target (give it with --base config.yaml)")


SECTIONS = ("model", "data", "lightning")


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, ListConfig):
        return "a list"
    return "a section"


def _fits(base, value) -> bool:
    """Whether an override ``value`` can stand where the config files have ``base``."""
    if base is None or value is None or (isinstance(value, str) and "${" in value):
        return True  # null disables an entry; an interpolation is checked when it resolves
    if isinstance(base, bool):
        return isinstance(value, bool)
    if isinstance(base, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(base, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(base, str):
        return not isinstance(value, (DictConfig, ListConfig))
    return isinstance(value, type(base))


def _raw(node, key):
    """``node[key]`` without resolving interpolations: a section, a list or a plain value."""
    child = node._get_node(key)
    return child if isinstance(child, (DictConfig, ListConfig)) else child._value()


def _shown(value) -> str:
    return repr(OmegaConf.to_container(value)) if isinstance(value, (DictConfig, ListConfig)) else repr(value)


def check_overrides(config: DictConfig, overrides: DictConfig, path: str = "") -> None:
    """Refuse ``key=value`` overrides that nothing would read (a top-level key that is not a
    section of the config) or whose value is not of the kind the config files have there
    (``data.params.batch_size=abc`` where the file says 8), before anything is built."""
    for key in overrides.keys():
        dotted = f"{path}.{key}" if path else str(key)
        value = _raw(overrides, key)
        if not path and key not in config and key not in SECTIONS:
            raise ConfigError(f"override {dotted}=...: the config has no section {key!r} ({', '.join(SECTIONS)}), "
                              "so nothing would read it")
        if key not in config:
            continue
        base = _raw(config, key)
        if isinstance(base, DictConfig) and isinstance(value, DictConfig):
            check_overrides(base, value, dotted)
        elif not _fits(base, value):
            raise ConfigError(f"override {dotted}={_shown(value).strip(chr(39))}: the config has {_kind(base)} "
                              f"there ({_shown(base)}), not {_kind(value)}")
