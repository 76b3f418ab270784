"""The training entry point behind main.py: configs -> model, data, Trainer -> fit (and test).

Order matters for "bad input changes nothing": everything a user can get wrong (flags, configs,
overrides, targets, model and dataset construction, Trainer settings) is checked before anything
is written, and a run directory made just before a failing check is removed again while empty.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

from omegaconf import DictConfig

from ldm.data.base import DatasetError
from ldm.modules.losses.lpips import LPIPSWeightsError
from ldm.training.cli import parse_args
from ldm.training.config import (
    ConfigError,
    check_targets,
    load_yaml,
    merge_configs,
    parse_dotlist,
    require_model,
    split_lightning,
)
from ldm.training.logdir import RunPaths, published_for_other_ranks, resolve_run_paths
from ldm.util import first_line, instantiate_from_config

USER_ERRORS = (ConfigError, DatasetError, LPIPSWeightsError)


@dataclass
class TrainingRun:
    """What a finished ``run`` leaves behind (used by tests and notebooks)."""
    trainer: Any
    model: Any
    data: Any
    paths: RunPaths
    config: DictConfig
    lightning_config: DictConfig


def launch_rank() -> int:
    """This process's global rank as launchers announce it (Lightning reads the same variables)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


def load_config(base: Sequence[str], resume_configs: Sequence[str], dotlist: Sequence[str]) -> DictConfig:
    """Saved configs of a resumed run, then ``--base`` files, then ``key=value`` overrides."""
    files = list(resume_configs) + list(base)
    return merge_configs([load_yaml(path) for path in files] + [parse_dotlist(dotlist)])


def checked_config(opt: argparse.Namespace, paths: RunPaths, dotlist: Sequence[str]) -> Tuple[DictConfig, DictConfig]:
    """``(config, lightning config)`` once the merged config names a model and only known targets."""
    config = load_config(opt.base, paths.resume_configs, dotlist)
    require_model(config)
    if opt.train and "data" not in config:
        raise ConfigError("training needs a data: section in the config")
    check_targets(config)
    return split_lightning(config)


def _is_constructor_error(err: TypeError) -> bool:
    text = str(err)
    return any(s in text for s in ("unexpected keyword argument", "required positional argument",
                                   "required keyword-only argument"))


def build(config: DictConfig, section: str):
    """Instantiate ``config[section]``; a wrong or missing parameter is a config error."""
    try:
        return instantiate_from_config(config[section])
    except TypeError as err:
        if _is_constructor_error(err):
            raise ConfigError(f"cannot build {section} ({config[section].target}): {err}") from None
        raise


def build_data(config: DictConfig):
    """The data module with its datasets built (so that empty or missing data fails now)."""
    data = build(config, "data")
    data.prepare_data()
    data.setup()
    print("#### Data #####")
    for name, dataset in getattr(data, "datasets", {}).items():
        size = len(dataset) if hasattr(dataset, "__len__") else "?"
        print(f"{name}, {dataset.__class__.__name__}, {size}")
    return data


def set_accumulation(model, trainer_kwargs: dict) -> int:
    """Gradient accumulation: Lightning's for automatic optimization; models that optimize
    manually (the autoencoders) accumulate themselves via ``model.accumulate_grad_batches``."""
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches", 1) or 1)
    if not getattr(model, "automatic_optimization", True) and accumulate > 1:
        if not hasattr(model, "accumulate_grad_batches"):
            raise ConfigError(f"{type(model).__name__} optimizes manually and cannot accumulate gradients; "
                              "set lightning.trainer.accumulate_grad_batches=1")
        model.accumulate_grad_batches = accumulate
        trainer_kwargs.pop("accumulate_grad_batches")
    return accumulate


def make_trainer(trainer_kwargs: dict, callbacks: list, logger, paths: RunPaths):
    """The Trainer, with atomic checkpoint writes and the SIGUSR1 / crash checkpoint."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning import Trainer

    from ldm.training.checkpointing import AtomicCheckpointIO, FaultCheckpoint

    plugins = list(trainer_kwargs.pop("plugins", None) or []) + [AtomicCheckpointIO()]
    try:
        trainer = Trainer(**trainer_kwargs, logger=logger, plugins=plugins, default_root_dir=paths.logdir,
                          callbacks=callbacks + [FaultCheckpoint(paths.ckptdir)])
    except (MisconfigurationException, ModuleNotFoundError, ValueError) as err:
        raise ConfigError(f"invalid Trainer settings: {first_line(err)}") from None
    trainer.logdir = paths.logdir
    return trainer


def _remove_if_empty(directory: Optional[str]) -> None:
    if directory and os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)


def prepare(argv: Optional[Sequence[str]]):
    """Everything before fitting: ``(opt, paths, config, lightning config, model, data, trainer)``."""
    opt, cli_trainer_args, dotlist = parse_args(argv)
    is_rank_zero = launch_rank() == 0
    paths = resolve_run_paths(opt, is_rank_zero)
    config, lightning_config = checked_config(opt, paths, dotlist)

    from pytorch_lightning import seed_everything

    from ldm.training.trainer_setup import (
        build_callbacks,
        build_logger,
        scaled_learning_rate,
        trainer_config_with_cli,
        trainer_kwargs_from,
    )

    lightning_config.trainer = trainer_config_with_cli(lightning_config, cli_trainer_args)
    trainer_kwargs = trainer_kwargs_from(lightning_config.trainer,
                                         bool(lightning_config.get("find_unused_parameters", False)))
    seed_everything(opt.seed, workers=True)
    model = build(config, "model")
    accumulate = set_accumulation(model, trainer_kwargs)
    data = build_data(config) if "data" in config else None

    created = None
    if is_rank_zero and not paths.resume_ckpt:
        paths = resolve_run_paths(opt, is_rank_zero, create=True, now=paths.now)
        created = paths.logdir
    try:
        logger = build_logger(lightning_config, paths, opt.project)
        callbacks = build_callbacks(lightning_config, paths, config, model)
        trainer = make_trainer(trainer_kwargs, callbacks, logger, paths)
    except USER_ERRORS:
        _remove_if_empty(created)
        raise
    if opt.train or "base_learning_rate" in config.model:
        model.learning_rate = scaled_learning_rate(config, accumulate, trainer.num_devices, opt.scale_lr)
    return opt, paths, config, lightning_config, model, data, trainer


def run(argv: Optional[Sequence[str]] = None) -> TrainingRun:
    """Train and/or test as main.py's command line says. Raises USER_ERRORS for bad input;
    an exception during training propagates after ``last.ckpt`` was written."""
    opt, paths, config, lightning_config, model, data, trainer = prepare(argv)
    try:
        with published_for_other_ranks(paths):
            if opt.train:
                trainer.fit(model, data, ckpt_path=paths.resume_ckpt)
            if not opt.no_test and not trainer.interrupted:
                run_test_stage(trainer, model, data)
    except Exception:
        if opt.debug and trainer.global_rank == 0 and sys.stdin.isatty():
            import pdb

            traceback.print_exc()
            pdb.post_mortem()
        raise
    finally:
        if opt.debug and not opt.resume and trainer.global_rank == 0:
            paths = move_to_debug_runs(paths)
    return TrainingRun(trainer, model, data, paths, config, lightning_config)


def run_test_stage(trainer, model, data) -> None:
    """``trainer.test`` when the data has a test split and the model a ``test_step``."""
    from pytorch_lightning.utilities.model_helpers import is_overridden

    has_test_data = data is not None and "test" in getattr(data, "dataset_configs", {})
    if has_test_data and is_overridden("test_step", model):
        trainer.test(model, data)
    else:
        print("No test split or no test_step: skipping the test stage")


def move_to_debug_runs(paths: RunPaths) -> RunPaths:
    """Debug runs go to ``<logdir root>/debug_runs/<name>`` so they do not mix with real runs."""
    root, name = os.path.split(os.path.abspath(paths.logdir))
    target_root = os.path.join(root, "debug_runs")
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, name)
    if os.path.isdir(paths.logdir) and not os.path.exists(target):
        os.rename(paths.logdir, target)
        print(f"Moved debug run to {target}")
        return RunPaths(now=paths.now, nowname=paths.nowname, logdir=target)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """main.py: 0 on success, 2 with a one-line message for bad input; other errors propagate."""
    try:
        run(argv)
    except USER_ERRORS as err:
        print(f"main.py: error: {err}", file=sys.stderr)
        return 2
    return 0
