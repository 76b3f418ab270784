"""Checkpoints that survive crashes and signals.

* Every write is atomic (temp file, fsync, rename); reads go through the safe loader.
* ``last.ckpt`` is written on the ``every_n_train_steps`` / ``train_time_interval`` schedule
  whatever the config monitors, at the end of training, and is never versioned (``last-v1.ckpt``).
* SIGUSR1 asks for ``last.ckpt`` without stopping; an exception during training (Ctrl-C, and the
  SIGTERM Lightning turns into one) leaves ``last.ckpt`` behind before it propagates.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Dict, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ldm.training.resume import read_training_checkpoint
from ldm.util import write_atomically


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`ldm.util.write_atomically`: readers see the old file or the
    complete new one, never a partial write. Written through a Python file, so that a full disk
    is an ``OSError`` (ENOSPC) rather than torch's "unexpected pos" RuntimeError."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    try:
        write_atomically(path, write)
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, os.fspath(path)) from None  # name the checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with atomic local writes (remote URLs keep Lightning's), and
    a reader that can never run code: a corrupted or hostile file is a one-line
    :class:`~ldm.util.CheckpointError` (``weights_only`` loading with the few names Lightning
    checkpoints hold)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_training_checkpoint(os.fspath(path))


class PeriodicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (the default ``lightning.modelcheckpoint`` target), with
    ``last.ckpt`` kept on schedule:

    * Lightning 2 defers a save that ``every_n_train_steps`` (or ``train_time_interval``) asks for
      until validation when the monitored metric does not exist yet, and a config that monitors
      ``val/...`` without validation data then never saves: here ``last.ckpt`` is written when it
      is due, and only the top-k part waits for the metric;
    * training that ends between two scheduled saves still leaves ``last.ckpt`` at its final step;
    * ``last.ckpt`` is always that file, never ``last-v1.ckpt`` beside a stale one (which a later
      ``--resume`` would read), also when the run directory has moved since the checkpoint.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        deferred_before = getattr(self, "_defer_save_until_validation", False)
        self._defer_save_until_validation = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        due_but_deferred = self._defer_save_until_validation
        self._defer_save_until_validation = deferred_before or due_but_deferred
        if due_but_deferred and self.save_last and not self._should_skip_saving_checkpoint(trainer):
            # last.ckpt now; leave the bookkeeping as it was, so that validation at this very
            # step still saves the top-k checkpoint it was deferred to
            saved_step, saved_path = self._last_global_step_saved, self._last_checkpoint_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved, self._last_checkpoint_saved = saved_step, saved_path

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        counter, self._enable_version_counter = self._enable_version_counter, False
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._enable_version_counter = counter
        self._last_written_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and getattr(self, "_last_written_step", None) != trainer.global_step \
                and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """A run directory that moved keeps its checkpoint bookkeeping: paths under the old
        folder are read under the new one (Lightning would drop them, orphaning the top-k files
        and versioning ``last.ckpt``)."""
        old = state_dict.get("dirpath")
        if old and self.dirpath and os.path.normpath(old) != os.path.normpath(self.dirpath):
            state_dict = _moved(state_dict, str(old), str(self.dirpath))
        super().load_state_dict(state_dict)


def _moved(state: Any, old: str, new: str) -> Any:
    """``state`` with every path under ``old`` rewritten under ``new``."""
    if isinstance(state, str):
        return new + state[len(old):] if state == old or state.startswith(old.rstrip(os.sep) + os.sep) else state
    if isinstance(state, dict):
        return {_moved(k, old, new): _moved(v, old, new) for k, v in state.items()}
    return state


def _note_last_checkpoint(trainer, path: str) -> None:
    """Tell ModelCheckpoint callbacks writing ``last.ckpt`` in the same folder that ``path`` is
    theirs, so that they overwrite it later instead of versioning a new ``last-v1.ckpt``. Called
    before writing ``path``, so that a run resumed from it knows too."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath and \
                os.path.realpath(callback.dirpath) == os.path.dirname(os.path.realpath(path)):
            callback.last_model_path = os.path.join(callback.dirpath, os.path.basename(path))


class FaultCheckpoint(Callback):
    """Writes ``<ckptdir>/last.ckpt``:

    * on SIGUSR1, at the end of the current training batch (all ranks agree on it), then
      training continues;
    * when fitting raises (Ctrl-C; SIGTERM, which Lightning raises at the end of the current
      batch; any error) after at least one optimizer step of this process, from rank 0 alone and
      before Lightning tears down, so the exception then propagates. ``interruption`` then says
      what stopped the run (``"Ctrl-C"``, ``"SIGTERM"``) and ``saved_step`` where ``last.ckpt`` is.
    """

    def __init__(self, ckptdir: str, signum: int = signal.SIGUSR1):
        super().__init__()
        # absolute, like ModelCheckpoint's own paths: a relative one would not be recognised as
        # its last.ckpt after a resume, and it would write last-v1.ckpt beside it
        self.path = os.path.abspath(os.path.join(ckptdir, "last.ckpt"))
        self.signum = signum
        self._requested = False
        self._previous_handler = None
        self._installed = False
        self._start_step: Optional[int] = None
        self.interruption: Optional[str] = None
        self.saved_step: Optional[int] = None

    def _on_signal(self, signum, frame) -> None:
        self._requested = True

    def setup(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread() and not self._installed:
            self._previous_handler = signal.signal(self.signum, self._on_signal)
            self._installed = True

    def teardown(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        if self._installed and signal.getsignal(self.signum) == self._on_signal:
            signal.signal(self.signum, self._previous_handler or signal.SIG_DFL)
        self._installed = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            self._requested = False
            _note_last_checkpoint(trainer, self.path)  # first, so that the file's own state says so
            trainer.save_checkpoint(self.path)
            rank_zero_info(f"Signal received: saved {self.path} at step {trainer.global_step}; continuing")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interruption = "Ctrl-C"
        elif isinstance(exception, SIGTERMException):
            self.interruption = "SIGTERM"
        if self._start_step is None or trainer.global_step <= self._start_step or not trainer.is_global_zero:
            return
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)) or \
                type(trainer.strategy).__name__.startswith(("FSDP", "DeepSpeed")):
            rank_zero_warn(f"{type(exception).__name__} during training: a sharded strategy needs all ranks to "
                           "save, so no last.ckpt was written")
            return
        try:
            _note_last_checkpoint(trainer, self.path)
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
        except Exception as err:  # the training error matters more; keep it the one raised
            rank_zero_warn(f"could not write {self.path} after {type(exception).__name__}: {err}")
            return
        self.saved_step = trainer.global_step
        if self.interruption is None:
            print(f"{type(exception).__name__} during training: saved {self.path} at step {trainer.global_step}")
