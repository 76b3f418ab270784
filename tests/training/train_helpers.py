"""Small modules and callbacks that main.py configs in the training tests point at, as
``tests.training.train_helpers.<Name>`` (importable from the repository root)."""
import json
import os
import signal
import time

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.modules.ema import LitEma


class TinyImageModel(pl.LightningModule):
    """A 3x3 conv trained to halve its input image, with an EMA of its weights and log_images."""

    def __init__(self, image_key: str = "image", use_ema: bool = True, monitor=None):
        super().__init__()
        self.image_key = image_key
        self.net = nn.Conv2d(3, 3, 3, padding=1)
        self.use_ema = use_ema
        self.monitor = monitor
        if use_ema:
            self.model_ema = LitEma(self.net)

    def get_input(self, batch):
        return batch[self.image_key].permute(0, 3, 1, 2).float()

    def training_step(self, batch, batch_idx):
        x = self.get_input(batch)
        loss = torch.mean((self.net(x) - 0.5 * x) ** 2)
        self.log("train/loss", loss, prog_bar=False, on_step=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = self.get_input(batch)
        self.log("val/loss", torch.mean((self.net(x) - 0.5 * x) ** 2))

    def test_step(self, batch, batch_idx):
        x = self.get_input(batch)
        self.log("test/loss", torch.mean((self.net(x) - 0.5 * x) ** 2))

    def on_train_batch_end(self, *args, **kwargs):
        if self.use_ema:
            self.model_ema(self.net)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def log_images(self, batch, split="train", **kwargs):
        x = self.get_input(batch)
        return {"inputs": x, "outputs": self.net(x)}


class RaiseAtStep(pl.Callback):
    """Raises RuntimeError once the global step reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise RuntimeError(f"planned failure at step {trainer.global_step}")


class RaiseAtTrainStart(pl.Callback):
    """Raises RuntimeError once training starts (after a resumed run has been restored)."""

    def on_train_start(self, trainer, pl_module):
        raise RuntimeError(f"planned failure before the first step (global step {trainer.global_step})")


class SignalSelfAtStep(pl.Callback):
    """Sends SIGUSR1 to this process when the global step reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class StepMarker(pl.Callback):
    """After each batch writes {step, pid, world_size, logdir, param_sum} to ``path`` (which may
    contain ``{rank}``), atomically, then sleeps ``delay`` seconds."""

    def __init__(self, path: str, delay: float = 0.0):
        self.path = path
        self.delay = delay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = self.path.format(rank=trainer.global_rank)
        with open(path + ".tmp", "w") as handle:
            json.dump({"step": trainer.global_step, "pid": os.getpid(), "world_size": trainer.world_size,
                       "logdir": os.path.abspath(trainer.logdir),
                       "param_sum": float(sum(p.detach().double().sum() for p in pl_module.parameters()))},
                      handle)
        os.replace(path + ".tmp", path)
        time.sleep(self.delay)


class RecordTrainStart(pl.Callback):
    """Saves the global step, optimizer state and model state at the start of training."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({"global_step": trainer.global_step,
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "state_dict": {k: v.clone() for k, v in pl_module.state_dict().items()}}, self.path)


class FixedBatchLoss(pl.Callback):
    """The model's training loss on the first batch, averaged over eight fixed draws of its
    randomness (timesteps, noise, posterior samples), before the first step and after the last."""

    def __init__(self):
        self.batch = None
        self.before = self.after = None

    def _loss(self, pl_module) -> float:
        losses = []
        with torch.random.fork_rng(), torch.no_grad():
            for seed in range(8):
                torch.manual_seed(seed)
                losses.append(float(pl_module.shared_step(self.batch)[0]))
        return sum(losses) / len(losses)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = {k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in batch.items()}
            self.before = self._loss(pl_module)

    def on_train_end(self, trainer, pl_module):
        self.after = self._loss(pl_module)


def make_image_folder(folder, count: int = 4, size: int = 16, captions=("a red circle", "a blue square")):
    """``count`` random RGB PNGs with sidecar captions in ``folder``; returns the folder."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w") as handle:
            handle.write(captions[i % len(captions)])
    return folder


def tiny_image_model_config(image_root, max_steps: int = 4, **lightning):
    """A main.py config: TinyImageModel on an image folder, CPU, no progress bar, no image logs
    unless the caller's ``lightning`` entries say otherwise."""
    from omegaconf import OmegaConf

    config = {
        "model": {"base_learning_rate": 1.0e-3, "target": "tests.training.train_helpers.TinyImageModel"},
        "data": {"target": "main.DataModuleFromConfig",
                 "params": {"batch_size": 2, "num_workers": 0,
                            "train": {"target": "ldm.data.image_folder.CaptionedImageFolder",
                                      "params": {"root": str(image_root), "size": 8}}}},
        "lightning": {"trainer": {"max_steps": max_steps, "accelerator": "cpu", "enable_progress_bar": False,
                                  "enable_model_summary": False, "log_every_n_steps": 1},
                      "callbacks": {"image_logger": {"params": {"disabled": True}}}},
    }
    return OmegaConf.merge(OmegaConf.create(config), OmegaConf.create({"lightning": lightning}))


def make_tiny_clip(folder) -> str:
    """A one-layer, 32-wide CLIP text model and the packaged tokenizer saved as a local directory
    that ``FrozenCLIPEmbedder(version=folder)`` loads."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.modules.encoders.tokenizer import build_clip_tokenizer

    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(os.path.join(folder, "text_encoder"))
    build_clip_tokenizer(77).save_pretrained(os.path.join(folder, "tokenizer"))
    return str(folder)


def tiny_txt2img_args(tiny_clip: str) -> list:
    """main.py arguments: the tiny-txt2img example made smaller for tests and trained on an image
    folder (give data.params.train.params.root=<folder> of 16x16 images): a random 16x16 first
    stage (8x8 latents, scale_by_std), the tiny CLIP as a trainable text encoder (written as
    ``<tiny_clip>/tiny-txt2img-clip.yaml``)."""
    from omegaconf import OmegaConf

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = OmegaConf.load(os.path.join(repo, "configs", "examples", "tiny-txt2img.yaml"))
    params = config.model.params
    params.pop("scale_factor")
    params.scale_by_std = True
    params.unet_config.params.context_dim = 32
    first_stage = params.first_stage_config.params
    first_stage.ckpt_path = None
    first_stage.ddconfig.update(resolution=16, ch=32, ch_mult=[1, 2])
    params.cond_stage_config = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                "params": {"version": str(tiny_clip), "freeze": False}}
    config.data.params.train = {"target": "ldm.data.image_folder.CaptionedImageFolder",
                                "params": {"root": "data/images", "size": 16, "random_crop": True}}
    config.data.params.validation = None
    path = os.path.join(str(tiny_clip), "tiny-txt2img-clip.yaml")
    OmegaConf.save(config, path)
    return ["--base", path]


class LastCheckpointProbe(pl.Callback):
    """Before the batch that starts at global step ``step``, writes to ``path`` (JSON) the global
    step stored in ``<ckptdir>/last.ckpt`` then, or null when there is none: what a run killed
    at that moment would leave."""

    def __init__(self, step: int, path: str):
        self.step = step
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        last = os.path.join(trainer.logdir, "checkpoints", "last.ckpt")
        saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"] if os.path.exists(last) else None
        with open(self.path, "w") as handle:
            json.dump({"last_ckpt_step": saved}, handle)


def training_checkpoint(path, global_step: int, weights_only: bool = False):
    """A small file shaped like a Lightning training checkpoint at ``global_step`` (or, with
    ``weights_only``, like a released model: a state dict alone)."""
    checkpoint = {"state_dict": {"net.weight": torch.full((2,), float(global_step))}, "global_step": global_step,
                  "epoch": 0}
    if not weights_only:
        checkpoint.update(optimizer_states=[], lr_schedulers=[], loops={}, callbacks={},
                          **{"pytorch-lightning_version": pl.__version__})
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    torch.save(checkpoint, str(path))
    return str(path)


class RunsCode:
    """Unpickling this calls ``os.system`` (a hostile checkpoint); ``marker`` shows whether it ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class InterruptAtStep(pl.Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) once the global step reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt
