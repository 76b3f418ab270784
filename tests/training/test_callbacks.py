"""ImageLogger's schedule and files, SetupCallback's saved configs."""
import os
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.training.callbacks import ImageLogger, SetupCallback


class FakeModule:
    """Just what ImageLogger touches: step counters, train/eval switches, log_images."""

    def __init__(self):
        self.global_step, self.current_epoch, self.training = 0, 0, True
        self.device = torch.device("cpu")
        self.calls = []

    def eval(self):
        self.training = False

    def train(self):
        self.training = True

    def log_images(self, batch, split="train", **kwargs):
        self.calls.append((split, kwargs, self.training, torch.is_grad_enabled()))
        return {"samples": torch.linspace(-2, 2, 6 * 3 * 4 * 4).view(6, 3, 4, 4), "note": "not an image"}


def _run_steps(logger, module, trainer, steps):
    logged = []
    for step in steps:
        module.global_step = step
        before = len(module.calls)
        logger.on_train_batch_end(trainer, module, None, {"x": 1}, batch_idx=step)
        if len(module.calls) > before:
            logged.append(step)
    return logged


def test_image_logger_logs_at_powers_of_two_then_every_batch_frequency(tmp_path):
    trainer = SimpleNamespace(is_global_zero=True, logger=None, default_root_dir=str(tmp_path))
    module = FakeModule()
    logger = ImageLogger(batch_frequency=8, max_images=4, log_images_kwargs={"N": 2})
    assert _run_steps(logger, module, trainer, range(0, 25)) == [1, 2, 4, 8, 16, 24]
    split, kwargs, training, grad = module.calls[0]
    assert split == "train" and kwargs == {"N": 2} and not training and not grad
    assert module.training  # put back in training mode


def test_image_logger_without_increasing_steps_and_first_step(tmp_path):
    trainer = SimpleNamespace(is_global_zero=True, logger=None, default_root_dir=str(tmp_path))
    logger = ImageLogger(batch_frequency=5, max_images=4, increase_log_steps=False, log_first_step=True)
    assert _run_steps(logger, FakeModule(), trainer, range(0, 11)) == [0, 5, 10]
    disabled = ImageLogger(batch_frequency=1, max_images=4, disabled=True)
    assert _run_steps(disabled, FakeModule(), trainer, range(0, 4)) == []


def test_image_logger_writes_clamped_grids_with_the_original_file_names(tmp_path):
    trainer = SimpleNamespace(is_global_zero=True, logger=SimpleNamespace(save_dir=str(tmp_path)),
                              default_root_dir="unused")
    module = FakeModule()
    module.current_epoch = 3
    _run_steps(ImageLogger(batch_frequency=2, max_images=4), module, trainer, [2])
    files = os.listdir(tmp_path / "images" / "train")
    assert files == ["samples_gs-000002_e-000003_b-000002.png"]
    grid = Image.open(tmp_path / "images" / "train" / files[0])
    assert grid.size == (4 * 6 + 2, 6 + 2)  # max_images=4 in one row of 4
    assert min(grid.getdata())[0] == 0  # -2 clamped to -1, rescaled to 0


def test_image_logger_does_nothing_on_other_ranks(tmp_path):
    trainer = SimpleNamespace(is_global_zero=False, logger=None, default_root_dir=str(tmp_path))
    assert _run_steps(ImageLogger(batch_frequency=1, max_images=4), FakeModule(), trainer, [1, 2]) == []


def test_setup_callback_saves_both_configs_and_never_overwrites(tmp_path, capsys):
    run = tmp_path / "run"
    config = OmegaConf.create({"model": {"target": "x.Y"}})
    lightning = OmegaConf.create({"trainer": {"max_steps": 3}, "callbacks": {"metrics_over_trainsteps_checkpoint": {}}})
    trainer = SimpleNamespace(global_rank=0)
    for _ in range(2):
        SetupCallback("", "NOW", str(run), str(run / "checkpoints"), str(run / "configs"), config,
                      lightning).setup(trainer, None, "fit")
    assert sorted(os.listdir(run / "configs")) == ["NOW-lightning-1.yaml", "NOW-lightning.yaml",
                                                  "NOW-project-1.yaml", "NOW-project.yaml"]
    assert OmegaConf.load(run / "configs" / "NOW-project.yaml") == config
    assert OmegaConf.load(run / "configs" / "NOW-lightning.yaml").lightning.trainer.max_steps == 3
    assert (run / "checkpoints" / "trainstep_checkpoints").is_dir()
    assert "Project config" in capsys.readouterr().out


def test_setup_callback_writes_nothing_on_other_ranks(tmp_path):
    SetupCallback("", "NOW", str(tmp_path / "run"), "c", "g", OmegaConf.create(), OmegaConf.create()).setup(
        SimpleNamespace(global_rank=1), None, "fit")
    assert not (tmp_path / "run").exists()
