"""The callbacks the original configs name as ``main.<Class>``: run-directory setup, sample
grids during training, per-epoch time and memory."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from ldm.training.images import grid_to_uint8, make_grid, save_log_image


def write_new_file(text: str, path: str) -> str:
    """Write ``text`` to ``path``, or to ``<stem>-1<ext>``... if it exists: never overwrite."""
    stem, ext = os.path.splitext(path)
    candidate, n = path, 0
    while True:
        try:
            with open(candidate, "x", encoding="utf-8") as handle:
                handle.write(text)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{stem}-{n}{ext}"


class SetupCallback(Callback):
    """Creates the run directories and saves the merged configs (``<now>-project.yaml``,
    ``<now>-lightning.yaml``) on rank 0 when fitting starts."""

    def __init__(self, resume, now: str, logdir: str, ckptdir: str, cfgdir: str,
                 config: DictConfig, lightning_config: DictConfig):
        super().__init__()
        self.resume = resume
        self.now = now
        self.logdir, self.ckptdir, self.cfgdir = logdir, ckptdir, cfgdir
        self.config = config
        self.lightning_config = lightning_config
        self._done = False

    def setup(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        if self._done or trainer.global_rank != 0:
            return
        self._done = True
        for directory in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(directory, exist_ok=True)
        if "metrics_over_trainsteps_checkpoint" in self.lightning_config.get("callbacks", {}):
            os.makedirs(os.path.join(self.ckptdir, "trainstep_checkpoints"), exist_ok=True)
        print(("Resuming" if self.resume else "Starting") + f" run in {self.logdir}")
        print("Project config")
        print(OmegaConf.to_yaml(self.config))
        write_new_file(OmegaConf.to_yaml(self.config), os.path.join(self.cfgdir, f"{self.now}-project.yaml"))
        print("Lightning config")
        print(OmegaConf.to_yaml(self.lightning_config))
        write_new_file(OmegaConf.to_yaml(OmegaConf.create({"lightning": self.lightning_config})),
                       os.path.join(self.cfgdir, f"{self.now}-lightning.yaml"))


class ImageLogger(Callback):
    """Every ``batch_frequency`` steps (and at steps 1, 2, 4, ... before that when
    ``increase_log_steps``), calls ``pl_module.log_images(batch, split=...)`` in eval mode without
    gradients and writes each returned batch as a grid to
    ``<save dir>/images/<split>/<key>_gs-<step>_e-<epoch>_b-<batch>.png`` (rank 0 only)."""

    def __init__(self, batch_frequency: int, max_images: int, clamp: bool = True, increase_log_steps: bool = True,
                 rescale: bool = True, disabled: bool = False, log_on_batch_idx: bool = False,
                 log_first_step: bool = False, log_images_kwargs: Optional[Dict] = None,
                 enable_autocast: bool = True):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger batch_frequency must be >= 1, got {batch_frequency}")
        self.batch_freq = batch_frequency
        self.max_images = max_images
        self.clamp, self.rescale = clamp, rescale
        self.disabled = disabled
        self.log_on_batch_idx = log_on_batch_idx
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.enable_autocast = enable_autocast
        if increase_log_steps:
            self.log_steps = [2 ** n for n in range(int(np.log2(self.batch_freq)) + 1)]
        else:
            self.log_steps = [self.batch_freq]

    def check_frequency(self, check_idx: int) -> bool:
        """True at multiples of the frequency and at the (consumed once) early log steps."""
        if ((check_idx % self.batch_freq) == 0 or (check_idx in self.log_steps)) and \
                (check_idx > 0 or self.log_first_step):
            if self.log_steps:
                self.log_steps.pop(0)
            return True
        return False

    def _autocast(self, pl_module):
        device = pl_module.device
        if self.enable_autocast and device.type == "cuda":
            return torch.autocast(device_type="cuda")
        return contextlib.nullcontext()

    def _collect(self, pl_module, batch, split: str) -> Dict[str, torch.Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), self._autocast(pl_module):
                images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        finally:
            if was_training:
                pl_module.train()
        out = {}
        for key, value in images.items():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                value = value[:self.max_images].detach().float().cpu()
                out[key] = torch.clamp(value, -1.0, 1.0) if self.clamp else value
        return out

    @rank_zero_only
    def log_local(self, save_dir: str, split: str, images: Dict[str, torch.Tensor],
                  global_step: int, current_epoch: int, batch_idx: int) -> None:
        root = os.path.join(save_dir, "images", split)
        for key, batch in images.items():
            grid = make_grid(batch, nrow=4)
            filename = f"{key}_gs-{global_step:06}_e-{current_epoch:06}_b-{batch_idx:06}.png"
            save_log_image(grid_to_uint8(grid, rescale=self.rescale), os.path.join(root, filename))

    def _log_to_logger(self, trainer, images: Dict[str, torch.Tensor], split: str) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.logger is None or not hasattr(experiment, "add_image"):
            return
        for key, batch in images.items():
            grid = make_grid(batch, nrow=4)
            grid = (grid + 1.0) / 2.0 if self.rescale else grid
            experiment.add_image(f"{split}/{key}", grid.clamp(0, 1), global_step=trainer.global_step)

    def log_img(self, trainer, pl_module, batch, batch_idx: int, split: str = "train") -> None:
        check_idx = batch_idx if self.log_on_batch_idx else pl_module.global_step
        if not (self.check_frequency(check_idx) and callable(getattr(pl_module, "log_images", None))
                and self.max_images > 0 and trainer.is_global_zero):
            return
        images = self._collect(pl_module, batch, split)
        save_dir = getattr(trainer.logger, "save_dir", None) or trainer.default_root_dir
        self.log_local(save_dir, split, images, pl_module.global_step, pl_module.current_epoch, batch_idx)
        self._log_to_logger(trainer, images, split)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.disabled and (pl_module.global_step > 0 or self.log_first_step):
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.disabled and pl_module.global_step > 0:
            self.log_img(trainer, pl_module, batch, batch_idx, split="val")


class CUDACallback(Callback):
    """Reports the wall time of each training epoch and, on CUDA, its peak memory (averaged
    over ranks). A run resumed mid-epoch times its first epoch from the start of training."""

    def __init__(self):
        super().__init__()
        self.start_time = time.time()

    def _cuda_device(self, trainer) -> Optional[torch.device]:
        device = trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_time = time.time()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        device = self._cuda_device(trainer)
        if device is not None:
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        self.start_time = time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        device = self._cuda_device(trainer)
        if device is not None:
            torch.cuda.synchronize(device)
        epoch_time = trainer.strategy.reduce(torch.tensor(time.time() - self.start_time,
                                                          device=trainer.strategy.root_device))
        rank_zero_info(f"Average Epoch time: {float(epoch_time):.2f} seconds")
        if device is not None:
            peak = torch.tensor(torch.cuda.max_memory_allocated(device) / 2 ** 20, device=device)
            rank_zero_info(f"Average Peak memory {float(trainer.strategy.reduce(peak)):.2f}MiB")


class LoraCheckpoint(Callback):
    """Writes the LoRA layers of a model trained with ``lora_config`` as a kohya-format
    ``.safetensors`` file (``model.lora_layers.save``): ``<dirpath>/<name>-step<N>.safetensors``
    every ``every_n_train_steps`` steps (none when unset) and ``<dirpath>/<name>.safetensors`` when
    training ends; the EMA weights when the model keeps an EMA. main.py adds it by itself for
    such models (docs/LORA.md, "Training a LoRA")."""

    def __init__(self, dirpath: str, name: str = "lora", every_n_train_steps: Optional[int] = None,
                 base_model: str = ""):
        super().__init__()
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be a positive number of steps, got {every_n_train_steps}")
        self.dirpath, self.name, self.every = dirpath, name, every_n_train_steps
        self.base_model = base_model

    def _save(self, trainer, pl_module, path: str) -> None:
        """Write the file; with an EMA (``use_ema``), of the EMA weights, as inference uses them."""
        os.makedirs(self.dirpath, exist_ok=True)
        with pl_module.ema_scope():
            self._write(trainer, pl_module, path)
        rank_zero_info(f"Saved LoRA layers to {path}" + (" (EMA weights)" if pl_module.use_ema else ""))

    def _write(self, trainer, pl_module, path: str) -> None:
        pl_module.lora_layers.save(path, {
            "ss_output_name": self.name, "ss_steps": trainer.global_step, "ss_epoch": trainer.current_epoch,
            "ss_learning_rate": getattr(pl_module, "learning_rate", ""), "ss_sd_model_name": self.base_model,
            "ss_training_comment": "ldm main.py, model.params.lora_config", "ldm_ema": pl_module.use_ema})

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self._save(trainer, pl_module,
                       os.path.join(self.dirpath, f"{self.name}-step{trainer.global_step:06d}.safetensors"))

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, os.path.join(self.dirpath, f"{self.name}.safetensors"))
