"""Checkpoints that survive crashes: every write is atomic (temp file, fsync, rename), SIGUSR1
asks for ``last.ckpt`` without stopping, and an exception during training leaves ``last.ckpt``
behind before it propagates."""
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

from ldm.util import write_atomically


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`ldm.util.write_atomically`: readers see the old file or the
    complete new one, never a partial write."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with atomic local writes (remote URLs keep Lightning's)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_torch_save(checkpoint, path)


def _note_last_checkpoint(trainer, path: str) -> None:
    """Tell ModelCheckpoint callbacks writing ``last.ckpt`` in the same folder that ``path`` is
    theirs, so that they overwrite it later instead of versioning a new ``last-v1.ckpt``. Called
    before writing ``path``, so that a run resumed from it knows too."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath and \
                os.path.abspath(callback.dirpath) == os.path.dirname(os.path.abspath(path)):
            callback.last_model_path = os.path.abspath(path)


class FaultCheckpoint(Callback):
    """Writes ``<ckptdir>/last.ckpt``:

    * on SIGUSR1, at the end of the current training batch (all ranks agree on it), then
      training continues;
    * when fitting raises (including Ctrl-C) after at least one optimizer step of this process,
      from rank 0 alone and before Lightning tears down, so the exception then propagates.
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
        print(f"{type(exception).__name__} during training: saved {self.path} at step {trainer.global_step}")
