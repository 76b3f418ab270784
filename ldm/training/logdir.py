"""Where a run writes: ``<logdir root>/<%Y-%m-%dT%H-%M-%S>_<name><postfix>/{checkpoints,configs,images}``,
and how ``--resume`` finds the run, its checkpoint and its saved configs again.

A new run never reuses an existing directory (a numeric suffix is added on a clash). Processes
that Lightning starts for the other ranks of a DDP run inherit the directory of rank 0 through
the environment, so all ranks agree on one run directory."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

from ldm.training.config import ConfigError
from ldm.training.resume import checkpoint_files

RUN_DIR_ENV = "LDM_TRAIN_LOGDIR"
RUN_NOW_ENV = "LDM_TRAIN_NOW"


@dataclass
class RunPaths:
    now: str
    nowname: str
    logdir: str
    resume_ckpt: Optional[str] = None
    resume_configs: List[str] = field(default_factory=list)
    resuming: bool = False

    @property
    def ckptdir(self) -> str:
        return os.path.join(self.logdir, "checkpoints")

    @property
    def cfgdir(self) -> str:
        return os.path.join(self.logdir, "configs")

    @property
    def last_ckpt(self) -> str:
        return os.path.join(self.ckptdir, "last.ckpt")


def _find_run_dir(ckpt_file: str) -> Optional[str]:
    """The run directory holding ``ckpt_file`` (``<run>/checkpoints/[...]/<file>``), or None."""
    directory = os.path.dirname(os.path.abspath(ckpt_file))
    while True:
        if os.path.basename(directory) == "checkpoints":
            run = os.path.dirname(directory)
            return run if os.path.isdir(os.path.join(run, "configs")) else None
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _saved_configs(run_dir: str) -> List[str]:
    return sorted(glob.glob(os.path.join(run_dir, "configs", "*.yaml")))


def resume_paths(resume: str, now: str) -> RunPaths:
    """``--resume <checkpoint>`` continues from that file, in the run directory holding it;
    ``--resume <run dir>`` from the newest complete checkpoint in ``<run dir>/checkpoints``, which
    :func:`ldm.training.resume.choose_resume_checkpoint` picks (``resume_ckpt`` stays None here)."""
    if not os.path.exists(resume):
        raise ConfigError(f"cannot resume: {resume} does not exist")
    if os.path.isfile(resume):
        ckpt = resume
        run_dir = _find_run_dir(resume)
        if run_dir is None:
            raise ConfigError(f"cannot resume from {resume}: it is not inside a run directory "
                              "(<run>/checkpoints/<file> next to <run>/configs/); to start a new run from "
                              "its weights, use model.params.ckpt_path=<file>")
    else:
        run_dir = resume.rstrip(os.sep) or os.sep
        ckpt = None
        if not checkpoint_files(os.path.join(run_dir, "checkpoints")):
            runs = sorted(d for d in os.listdir(run_dir) if checkpoint_files(os.path.join(run_dir, d, "checkpoints")))
            if runs:
                raise ConfigError(f"cannot resume from {resume}: it holds runs, not a run's checkpoints; give one, "
                                  f"e.g. the newest: --resume {os.path.join(run_dir, runs[-1])}")
            raise ConfigError(f"cannot resume from {resume}: it has no checkpoints (checkpoints/*.ckpt)")
    return RunPaths(now=now, nowname=os.path.basename(os.path.abspath(run_dir)), logdir=run_dir,
                    resume_ckpt=ckpt, resume_configs=_saved_configs(run_dir), resuming=True)


def run_name(opt: argparse.Namespace) -> str:
    """``_<--name>``, else ``_<stem of the first --base>``, else empty; then ``--postfix``."""
    if opt.name:
        name = "_" + opt.name
    elif opt.base:
        name = "_" + os.path.splitext(os.path.basename(opt.base[0]))[0]
    else:
        name = ""
    return name + opt.postfix


def check_log_root(root: str) -> None:
    """``--logdir`` must be, or be creatable in, a folder this process can write (checked before
    any work is done)."""
    existing = os.path.abspath(root)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--logdir {root}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--logdir {root}: cannot write in {existing}")


def create_new_run_dir(root: str, nowname: str) -> str:
    """Create ``root/nowname`` (``nowname_1``, ``_2``... when it already exists) and return it."""
    candidate, n = os.path.join(root, nowname), 0
    try:
        os.makedirs(root, exist_ok=True)
        while True:
            try:
                os.makedirs(candidate)
                return candidate
            except FileExistsError:
                n += 1
                candidate = os.path.join(root, f"{nowname}_{n}")
    except OSError as err:
        raise ConfigError(f"--logdir {root}: cannot create {candidate}: {err.strerror or err}") from None


def resolve_run_paths(opt: argparse.Namespace, is_rank_zero: bool, create: bool = False,
                      now: Optional[str] = None) -> RunPaths:
    """The run directory for these options. For a new run, rank 0 plans it and, with ``create``,
    makes it (unique); other ranks use the one rank 0 published in the environment."""
    if opt.name and opt.resume:
        raise ConfigError("-n/--name and -r/--resume cannot be given together: --resume continues a run in "
                          "its own directory; to start a new named run from a checkpoint's weights, use "
                          "-n with model.params.ckpt_path=<file>")
    inherited_dir, inherited_now = os.environ.get(RUN_DIR_ENV), os.environ.get(RUN_NOW_ENV)
    if now is None:
        now = inherited_now if (inherited_now and not is_rank_zero) else \
            datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    if opt.resume:
        return resume_paths(opt.resume, now)
    nowname = now + run_name(opt)
    if is_rank_zero:
        check_log_root(opt.logdir)
    if not is_rank_zero:
        logdir = inherited_dir or os.path.join(opt.logdir, nowname)
    elif create:
        logdir = create_new_run_dir(opt.logdir, nowname)
    else:
        logdir = os.path.join(opt.logdir, nowname)
    return RunPaths(now=now, nowname=os.path.basename(logdir), logdir=logdir)


@contextlib.contextmanager
def published_for_other_ranks(paths: RunPaths) -> Iterator[None]:
    """While active, processes Lightning launches for the other ranks find this run directory
    in their environment; the previous environment is restored afterwards."""
    previous = {name: os.environ.get(name) for name in (RUN_DIR_ENV, RUN_NOW_ENV)}
    os.environ[RUN_DIR_ENV] = os.path.abspath(paths.logdir)
    os.environ[RUN_NOW_ENV] = paths.now
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
