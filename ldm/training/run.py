"""The training entry point behind main.py: configs -> model, data, Trainer -> fit (and test).

Order matters for "bad input changes nothing": everything a user can get wrong (flags, configs,
overrides, targets, model and dataset construction, Trainer settings) is checked before anything
is written, and a run directory made just before a failing check is removed again while empty.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from ldm.data.base import DatasetError
from ldm.modules.losses.lpips import LPIPSWeightsError
from ldm.training.cli import parse_args
from ldm.training.config import (
    ConfigError,
    check_overrides,
    check_targets,
    load_yaml,
    merge_configs,
    parse_dotlist,
    require_model,
    split_lightning,
)
from ldm.training.logdir import RunPaths, published_for_other_ranks, resolve_run_paths
from ldm.training.resume import (
    RunDirectoryLock,
    check_steps_left,
    choose_resume_checkpoint,
    claim_run_directory,
    remove_stale_temporaries,
    resume_point,
)
from ldm.util import CheckpointError, first_line, get_obj_from_str, instantiate_from_config

USER_ERRORS = (ConfigError, DatasetError, LPIPSWeightsError, CheckpointError)
# Errors that constructing a model or dataset from a config with a wrong value raises.
BUILD_ERRORS = (TypeError, ValueError, AssertionError, AttributeError, KeyError, IndexError, ModuleNotFoundError)


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM (``last.ckpt`` saved first when a step was done);
    main.py prints the message and exits with ``exit_code`` (128 + the signal number)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Prepared:
    """Everything ``run`` needs, checked: options, paths, configs, model, data, Trainer, and the
    lock on the run directory while it trains."""
    opt: argparse.Namespace
    paths: RunPaths
    config: DictConfig
    lightning_config: DictConfig
    model: Any
    data: Any
    trainer: Any
    lock: Optional[RunDirectoryLock] = None


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
    """Saved configs of a resumed run, then ``--base`` files, then ``key=value`` overrides (checked
    against the files: a value of the wrong kind or a key nothing reads is an error)."""
    files = merge_configs([load_yaml(path) for path in list(resume_configs) + list(base)])
    overrides = parse_dotlist(dotlist)
    check_overrides(files, overrides)
    return merge_configs([files, overrides])


def check_something_to_test(opt: argparse.Namespace, config: DictConfig, resuming: bool) -> None:
    """Without ``-t`` main.py only runs the test split (as the original); a command that would
    then do nothing at all is refused."""
    model_class = get_obj_from_str(config.model.target)
    from pytorch_lightning import LightningModule

    # ldm's models are LightningModules only once built with Lightning loaded (ldm.models.lazy_lightning)
    has_test_step = getattr(model_class, "test_step", None) not in (None, LightningModule.test_step)
    if opt.no_test:
        why = "--no-test was given"
    elif OmegaConf.select(config, "data.params.test", default=None) is None:
        why = "the config has no test split (data.params.test)"
    elif not has_test_step:
        why = f"{model_class.__name__} has no test_step"
    else:
        return
    hint = f"add -t to continue training: python main.py --resume {opt.resume} -t" if resuming else "add -t to train"
    raise ConfigError(f"nothing to do: without -t main.py does not train, it only runs the test split (as the "
                      f"original), and {why}; {hint}")


def checked_config(opt: argparse.Namespace, paths: RunPaths, dotlist: Sequence[str]) -> Tuple[DictConfig, DictConfig]:
    """``(config, lightning config)`` once the merged config names a model and only known targets."""
    config = load_config(opt.base, paths.resume_configs, dotlist)
    require_model(config)
    if opt.train and "data" not in config:
        raise ConfigError("training needs a data: section in the config")
    check_targets(config)
    if not opt.train:
        check_something_to_test(opt, config, paths.resuming)
    return split_lightning(config)


def _is_constructor_error(err: TypeError) -> bool:
    text = str(err)
    return any(s in text for s in ("unexpected keyword argument", "required positional argument",
                                   "required keyword-only argument"))


def build(config: DictConfig, section: str, debug: bool = False):
    """Instantiate ``config[section]``; a wrong or missing parameter, or a value the constructor
    cannot use, is a config error (with ``--debug`` the original exception propagates)."""
    try:
        return instantiate_from_config(config[section])
    except USER_ERRORS:
        raise
    except BUILD_ERRORS as err:
        if debug:
            raise
        target = config[section].get("target")
        if isinstance(err, TypeError) and _is_constructor_error(err):
            raise ConfigError(f"cannot build {section} ({target}): {err}") from None
        raise ConfigError(f"cannot build {section} ({target}): {type(err).__name__}: {first_line(err)} "
                          "(check the values of this section; --debug shows where it failed)") from None


def build_data(config: DictConfig, debug: bool = False):
    """The data module with its datasets built (so that empty or missing data fails now)."""
    data = build(config, "data", debug)
    try:
        data.prepare_data()
        data.setup()
    except USER_ERRORS:
        raise
    except BUILD_ERRORS as err:
        if debug:
            raise
        raise ConfigError(f"cannot build the datasets of data ({config.data.get('target')}): "
                          f"{type(err).__name__}: {first_line(err)}") from None
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
    except (MisconfigurationException, ModuleNotFoundError, ValueError, TypeError) as err:
        raise ConfigError(f"invalid Trainer settings: {first_line(err)}") from None
    trainer.logdir = paths.logdir
    return trainer


def _remove_if_empty(directory: Optional[str]) -> None:
    if directory and os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)


def find_resume_point(opt: argparse.Namespace, paths: RunPaths):
    """The checkpoint ``--resume`` continues from (the file named, or the newest complete one of
    the run directory), read far enough to know it is a whole training state."""
    point = resume_point(paths.resume_ckpt) if paths.resume_ckpt else \
        choose_resume_checkpoint(paths.logdir, paths.ckptdir)
    paths.resume_ckpt = point.path
    if not opt.train:
        print(f"Not training (no -t): testing {point.path}")
    return point


def prepare(argv: Optional[Sequence[str]]) -> Prepared:
    """Everything before fitting, with every check a user's input can fail done first."""
    opt, cli_trainer_args, dotlist = parse_args(argv)
    is_rank_zero = launch_rank() == 0
    paths = resolve_run_paths(opt, is_rank_zero)
    config, lightning_config = checked_config(opt, paths, dotlist)
    point = find_resume_point(opt, paths) if paths.resuming else None

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
    if point is not None and opt.train:
        check_steps_left(point, trainer_kwargs)
    lock = None
    if point is not None and opt.train and is_rank_zero:
        lock = RunDirectoryLock(paths.logdir)
        lock.acquire()
    try:
        seed_everything(opt.seed, workers=True)
        model = build(config, "model", opt.debug)
        accumulate = set_accumulation(model, trainer_kwargs)
        data = build_data(config, opt.debug) if "data" in config else None

        created = None
        if is_rank_zero and not paths.resuming:
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
        if opt.train and is_rank_zero:
            if lock is None:
                lock = claim_run_directory(paths.logdir, paths.ckptdir)
            else:
                removed = remove_stale_temporaries(paths.ckptdir)
                if removed:
                    print(f"Removed {len(removed)} temporary file(s) of interrupted checkpoint saves: "
                          f"{', '.join(removed)}")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Prepared(opt, paths, config, lightning_config, model, data, trainer, lock)


def _interruption(trainer, paths: RunPaths) -> Optional[TrainingInterrupted]:
    """What to tell the user when Ctrl-C or SIGTERM stopped fitting (None for other exits)."""
    from ldm.training.checkpointing import FaultCheckpoint

    fault = next((c for c in trainer.callbacks if isinstance(c, FaultCheckpoint)), None)
    if fault is None or fault.interruption is None:
        return None
    code = 130 if fault.interruption == "Ctrl-C" else 143
    if fault.saved_step is None:
        saved = "no step was completed, nothing saved"
    else:
        saved = f"saved {fault.path} at step {fault.saved_step}"
    return TrainingInterrupted(f"interrupted by {fault.interruption}: {saved}; continue with: "
                               f"python main.py --resume {paths.logdir} -t", code)


def _refused_by_lightning(err: BaseException) -> bool:
    """Whether Lightning itself raised ``err`` (a check of its settings against the data, such as
    a ``val_check_interval`` longer than the epoch), not the model or the data code it called."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and any(f"{os.sep}{name}{os.sep}" in frames[-1].filename
                                for name in ("pytorch_lightning", "lightning_fabric", "lightning"))


def run(argv: Optional[Sequence[str]] = None) -> TrainingRun:
    """Train and/or test as main.py's command line says. Raises USER_ERRORS for bad input and
    TrainingInterrupted for Ctrl-C / SIGTERM; an exception during training propagates after
    ``last.ckpt`` was written."""
    prepared = prepare(argv)
    opt, paths, trainer, model, data = prepared.opt, prepared.paths, prepared.trainer, prepared.model, prepared.data
    try:
        with published_for_other_ranks(paths):
            if opt.train:
                try:
                    trainer.fit(model, data, ckpt_path=paths.resume_ckpt)
                except SystemExit:  # Lightning's exit after Ctrl-C, and its SIGTERMException
                    interrupted = _interruption(trainer, paths)
                    if interrupted is None:
                        raise
                    raise interrupted from None
                except (ValueError, TypeError) as err:
                    if not _refused_by_lightning(err) or opt.debug:
                        raise
                    raise ConfigError(f"Lightning refused the settings for this run: {first_line(err)}") from None
            if not opt.no_test and not trainer.interrupted:
                run_test_stage(trainer, model, data, None if opt.train else paths.resume_ckpt)
    except Exception as err:
        if opt.debug and not isinstance(err, TrainingInterrupted) and trainer.global_rank == 0 and \
                sys.stdin.isatty():
            import pdb

            traceback.print_exc()
            pdb.post_mortem()
        raise
    finally:
        if prepared.lock is not None:
            prepared.lock.release()
        if opt.debug and not opt.resume and trainer.global_rank == 0:
            paths = move_to_debug_runs(paths)
    return TrainingRun(trainer, model, data, paths, prepared.config, prepared.lightning_config)


def run_test_stage(trainer, model, data, ckpt_path: Optional[str] = None) -> None:
    """``trainer.test`` when the data has a test split and the model a ``test_step``; of the
    weights in ``ckpt_path`` when given (``--resume`` without ``-t``), else of the model as trained."""
    from pytorch_lightning.utilities.model_helpers import is_overridden

    has_test_data = data is not None and "test" in getattr(data, "dataset_configs", {})
    if has_test_data and is_overridden("test_step", model):
        trainer.test(model, data, ckpt_path=ckpt_path)
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


def one_line(err: BaseException) -> str:
    """The message of a user error in one line; one raised in a DataLoader worker arrives wrapped
    in the worker's traceback, whose last line is the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        name, sep, message = text.splitlines()[-1].partition(": ")
        return message if sep and name.endswith(type(err).__name__) else text.splitlines()[-1]
    return " ".join(text.split("\n")) if text else type(err).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """main.py: 0 on success, 2 with a one-line message for bad input, 130 / 143 with one line
    after Ctrl-C / SIGTERM (``last.ckpt`` saved); other errors propagate."""
    try:
        run(argv)
    except USER_ERRORS as err:
        print(f"main.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"main.py: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"main.py: error: no space left on the device writing {err.filename or 'a file'}: checkpoints are "
              "written atomically, so the last complete one is intact; free space, then continue with --resume",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("main.py: interrupted by Ctrl-C before training started: nothing was trained or saved",
              file=sys.stderr)
        return 130
    return 0
