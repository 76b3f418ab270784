"""What ``--resume`` continues from, read safely, and a run directory that one process trains
at a time.

* :func:`read_training_checkpoint`: a Lightning training checkpoint, read without running code;
  a corrupted, truncated or hostile file is a one-line :class:`~ldm.util.CheckpointError`.
* :func:`choose_resume_checkpoint`: ``--resume <run dir>`` continues from the newest complete
  checkpoint of the run (the highest ``global_step``; ``last.ckpt`` on a tie), skipping files
  that cannot be read or hold weights only, and saying so.
* :func:`claim_run_directory`: a lock on the run directory, held while this process trains it,
  and then the removal of temporary files that killed saves left behind.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

from ldm.training.config import ConfigError
from ldm.util.errors import CheckpointError, first_line

# Lightning needs these to restore a training run (weights, optimizers, loop progress).
RESUMABLE_KEYS = ("state_dict", "optimizer_states", "loops", "global_step")
# ldm.util.write_atomically's temporary files: ".<target name>.<random>.tmp" beside the target.
STALE_TEMPORARY = re.compile(r"^\..+\.ckpt\.[A-Za-z0-9_]+\.tmp$")
LOCK_NAME = ".training.lock"


def read_training_checkpoint(path: str, mmap: bool = False) -> Dict[str, Any]:
    """The whole checkpoint dict at ``path`` (``mmap``: tensors mapped, not read). The file first
    passes the one loader's checks (:func:`ldm.util.checkpoint_tensor_shapes`: format told by
    content, structure, what its pickle may name), so a missing, corrupted, truncated or hostile
    file is its one-line CheckpointError and nothing in it runs; then it is loaded with
    ``weights_only``."""
    from ldm.util import checkpoint_tensor_shapes
    from ldm.util.safe_unpickling import torch_load_safely

    checkpoint_tensor_shapes(path)
    try:
        try:
            checkpoint = torch_load_safely(path, mmap)
        except RuntimeError:
            if not mmap:
                raise
            checkpoint = torch_load_safely(path, False)  # legacy (non-zip) files cannot be mapped
    except Exception as err:  # e.g. a safetensors file: weights, not a torch training checkpoint
        raise CheckpointError(f"cannot read {path} as a training checkpoint ({first_line(err)[:120]})") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path} does not hold a checkpoint (found {type(checkpoint).__name__})")
    return dict(checkpoint)


@dataclass
class ResumePoint:
    path: str
    global_step: int
    epoch: int


def resume_point(path: str) -> ResumePoint:
    """The step and epoch of a complete training checkpoint; CheckpointError for a file that
    cannot be read and ConfigError for one that holds weights only."""
    if path.endswith(".safetensors"):
        raise ConfigError(f"cannot resume from {path}: a .safetensors file holds weights only, not a training "
                          f"state; to start a new run from its weights, use model.params.ckpt_path={path}")
    checkpoint = read_training_checkpoint(path, mmap=True)
    missing = [key for key in RESUMABLE_KEYS if key not in checkpoint]
    if missing:
        raise ConfigError(f"cannot resume from {path}: it holds weights only, not a training state (no "
                          f"{', '.join(missing)}); to start a new run from its weights, use "
                          f"model.params.ckpt_path={path}")
    step, epoch = checkpoint["global_step"], checkpoint.get("epoch", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(epoch, int):
        raise CheckpointError(f"cannot resume from {path}: its global_step/epoch are not step counts "
                              f"({step!r}, {epoch!r})")
    return ResumePoint(path, step, epoch)


def checkpoint_files(ckptdir: str) -> List[str]:
    """Every ``*.ckpt`` under ``ckptdir`` (sub-folders included), ``last.ckpt`` first."""
    found = []
    for directory, subdirs, files in os.walk(ckptdir):
        subdirs.sort()
        found += [os.path.join(directory, name) for name in sorted(files)
                  if name.endswith(".ckpt") and not name.startswith(".")]
    return sorted(found, key=lambda p: (p != os.path.join(ckptdir, "last.ckpt"), p))


def choose_resume_checkpoint(run_dir: str, ckptdir: str) -> ResumePoint:
    """The newest complete checkpoint of a run; one line per file passed over."""
    points: List[ResumePoint] = []
    reasons: Dict[str, str] = {}
    for path in checkpoint_files(ckptdir):
        try:
            points.append(resume_point(path))
        except (CheckpointError, ConfigError) as err:
            reasons[path] = "weights only" if "weights only" in str(err) else str(err)
    if not points:
        detail = "; ".join(f"{os.path.relpath(p, ckptdir)}: {r}" for p, r in reasons.items()) or "no *.ckpt files"
        raise ConfigError(f"cannot resume from {run_dir}: no complete checkpoint in {ckptdir} ({detail})")
    last = os.path.join(ckptdir, "last.ckpt")
    best = max(points, key=lambda p: (p.global_step, p.path == last, os.path.getmtime(p.path)))
    if best.path != last:
        stale = next((p for p in points if p.path == last), None)
        why = (f"is at step {stale.global_step}" if stale else
               f"cannot be used ({reasons[last]})" if last in reasons else "does not exist")
        print(f"Resuming from {best.path} (step {best.global_step}): last.ckpt {why}")
    for path, reason in reasons.items():
        if reason != "weights only":
            print(f"Skipping {path}: {reason}")
    return best


class RunDirectoryLock:
    """An exclusive lock on ``<run>/.training.lock`` (released when the process ends, also when it
    is killed). Without ``fcntl`` (Windows) or on a file system without locks nothing is locked."""

    def __init__(self, logdir: str):
        self.path = os.path.join(logdir, LOCK_NAME)
        self._handle = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        try:
            handle = open(self.path, "a+", encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot train in {os.path.dirname(self.path)}: {err.strerror or err} "
                              f"({self.path})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise ConfigError(f"{os.path.dirname(self.path)} is being trained by another process (pid {holder}); "
                              "wait for it to finish or stop it, then resume") from None
        except OSError:  # a file system without locks (some network mounts): train unguarded
            handle.close()
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def remove_stale_temporaries(ckptdir: str) -> List[str]:
    """Delete the temporary files that saves killed mid-write left in ``ckptdir``; their names."""
    removed = []
    for directory, _, files in os.walk(ckptdir):
        for name in files:
            if STALE_TEMPORARY.match(name):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return sorted(removed)


def claim_run_directory(logdir: str, ckptdir: str) -> RunDirectoryLock:
    """Lock the run directory for this process, then clean what earlier killed saves left."""
    lock = RunDirectoryLock(logdir)
    os.makedirs(logdir, exist_ok=True)
    lock.acquire()
    removed = remove_stale_temporaries(ckptdir)
    if removed:
        print(f"Removed {len(removed)} temporary file(s) of interrupted checkpoint saves: {', '.join(removed)}")
    return lock


def check_steps_left(point: ResumePoint, trainer_kwargs: Mapping[str, Any]) -> None:
    """A resumed run that has already reached ``max_steps`` would train nothing."""
    max_steps = trainer_kwargs.get("max_steps")
    if isinstance(max_steps, int) and max_steps >= 0 and point.global_step >= max_steps:
        raise ConfigError(f"nothing to train: {point.path} is at step {point.global_step} and max_steps is "
                          f"{max_steps}; continue with a larger --max_steps, e.g. --max_steps {2 * max(max_steps, 1)}")
