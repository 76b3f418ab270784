"""lightning: section -> Lightning 2 Trainer arguments, logger, checkpointing, callbacks, LR rule."""
import os
import sys
import types
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from ldm.training.callbacks import CUDACallback, ImageLogger, SetupCallback
from ldm.training.checkpointing import PeriodicModelCheckpoint
from ldm.training.config import ConfigError
from ldm.training.logdir import RunPaths
from ldm.training.trainer_setup import (
    build_callbacks,
    build_logger,
    legacy_gpus,
    scaled_learning_rate,
    trainer_config_with_cli,
    trainer_kwargs_from,
)


def _kwargs(trainer, find_unused=False):
    return trainer_kwargs_from(OmegaConf.create(trainer), find_unused)


@pytest.mark.parametrize("gpus, expected", [
    ("0,", ("gpu", [0])), ("0,1", ("gpu", [0, 1])), ("2", ("gpu", 2)), (0, ("cpu", None)), ("", ("cpu", None)),
])
def test_legacy_gpus_flag_maps_to_accelerator_and_devices(gpus, expected):
    assert legacy_gpus(gpus) == expected


def test_pl1_trainer_config_is_translated():
    kwargs = _kwargs({"gpus": "0,1", "accelerator": "ddp", "benchmark": True, "weights_summary": None,
                      "progress_bar_refresh_rate": 5})
    assert kwargs == {"strategy": "ddp", "accelerator": "gpu", "devices": [0, 1], "benchmark": True}


def test_find_unused_parameters_selects_the_matching_ddp_strategy():
    assert _kwargs({"strategy": "ddp"}, find_unused=True)["strategy"] == "ddp_find_unused_parameters_true"
    assert "strategy" not in _kwargs({}, find_unused=True)


@pytest.mark.parametrize("trainer, message", [
    ({"not_an_arg": 1}, "lightning.trainer.not_an_arg is not an argument"),
    ({"resume_from_checkpoint": "x.ckpt"}, "resume with --resume"),
    ({"accelerator": "dp"}, "does not exist in Lightning 2"),
])
def test_unusable_trainer_settings_are_config_errors(trainer, message):
    with pytest.raises(ConfigError, match=message):
        _kwargs(trainer)


def test_command_line_trainer_flags_override_the_config():
    lightning = OmegaConf.create({"trainer": {"max_steps": 10, "benchmark": True}})
    merged = trainer_config_with_cli(lightning, {"max_steps": 3})
    assert merged == {"max_steps": 3, "benchmark": True}


def _paths(tmp_path, resume=None):
    return RunPaths(now="2024-01-01T00-00-00", nowname="2024-01-01T00-00-00_x", logdir=str(tmp_path / "run"),
                    resume_ckpt=resume)


def test_default_logger_is_a_csv_logger_in_the_run_dir_and_testtube_maps_to_it(tmp_path):
    logger = build_logger(OmegaConf.create(), _paths(tmp_path))
    assert isinstance(logger, CSVLogger) and logger.save_dir == str(tmp_path / "run")
    legacy = OmegaConf.create({"logger": {"target": "pytorch_lightning.loggers.TestTubeLogger",
                                          "params": {"name": "testtube", "debug": False}}})
    logger = build_logger(legacy, _paths(tmp_path))
    assert isinstance(logger, CSVLogger) and logger.name == "testtube"


class _NeedsWandb:
    def __init__(self, save_dir=None, name=None):
        raise ModuleNotFoundError("No module named 'wandb'", name="wandb")


def test_a_logger_whose_package_is_missing_is_a_config_error(tmp_path, monkeypatch):
    module = types.ModuleType("ldm_test_loggers")
    module.NeedsWandb = _NeedsWandb
    monkeypatch.setitem(sys.modules, "ldm_test_loggers", module)
    cfg = OmegaConf.create({"logger": {"target": "ldm_test_loggers.NeedsWandb"}})
    with pytest.raises(ConfigError, match="needs the package 'wandb'"):
        build_logger(cfg, _paths(tmp_path))


def test_default_callbacks_follow_the_original(tmp_path):
    model = SimpleNamespace(monitor="val/loss")
    lightning = OmegaConf.create({"callbacks": {"image_logger": {"params": {"batch_frequency": 5}}},
                                  "modelcheckpoint": {"params": {"every_n_train_steps": 7}}})
    callbacks = build_callbacks(lightning, _paths(tmp_path), OmegaConf.create({"model": {}}), model)
    kinds = {type(c) for c in callbacks}
    assert kinds == {SetupCallback, ImageLogger, LearningRateMonitor, CUDACallback, PeriodicModelCheckpoint}
    ckpt = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert ckpt.dirpath == os.path.join(str(tmp_path / "run"), "checkpoints")
    assert ckpt.save_last and ckpt.monitor == "val/loss" and ckpt.save_top_k == 3
    assert ckpt._every_n_train_steps == 7
    assert next(c for c in callbacks if isinstance(c, ImageLogger)).batch_freq == 5


def test_trainstep_checkpoints_and_ignore_keys_callback_follow_the_original_rules(tmp_path):
    lightning = OmegaConf.create({"callbacks": {
        "metrics_over_trainsteps_checkpoint": {"params": {"every_n_train_steps": 3}},
        "ignore_keys_callback": {"target": "pytorch_lightning.callbacks.Callback", "params": {}}}})
    callbacks = build_callbacks(lightning, _paths(tmp_path), OmegaConf.create(), SimpleNamespace())
    steps = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c._every_n_train_steps == 3]
    assert len(steps) == 1 and steps[0].dirpath.endswith(os.path.join("checkpoints", "trainstep_checkpoints"))
    assert steps[0].save_weights_only and steps[0].save_top_k == -1
    assert len(callbacks) == 6  # without --resume the ignore_keys_callback is dropped


def test_learning_rate_is_scaled_by_accumulation_devices_and_batch(capsys):
    config = OmegaConf.create({"model": {"base_learning_rate": 1e-4}, "data": {"params": {"batch_size": 3}}})
    assert scaled_learning_rate(config, accumulate=2, num_devices=4, scale_lr=True) == pytest.approx(2.4e-3)
    assert "2.40e-03 = 2 (accumulate_grad_batches) * 4 (num_gpus) * 3 (batchsize) * 1.00e-04" in capsys.readouterr().out
    assert scaled_learning_rate(config, accumulate=2, num_devices=4, scale_lr=False) == 1e-4
    no_batch = OmegaConf.create({"model": {"base_learning_rate": 1e-4}, "data": {"params": {}}})
    assert scaled_learning_rate(no_batch, accumulate=2, num_devices=4, scale_lr=True) == 1e-4
    with pytest.raises(ConfigError, match="base_learning_rate is missing"):
        scaled_learning_rate(OmegaConf.create({"model": {}}), 1, 1, True)


@pytest.mark.parametrize("lightning, message", [
    ({"callbacks": {"image_logger": {"params": {"batch_frequency": 0}}}},
     r"cannot build lightning.callbacks.image_logger \(ldm.training.callbacks.ImageLogger\): ImageLogger "
     "batch_frequency must be >= 1, got 0"),
    ({"callbacks": {"image_logger": {"params": {"nonsense": 1}}}},
     "cannot build lightning.callbacks.image_logger .*unexpected keyword argument 'nonsense'"),
    ({"modelcheckpoint": {"params": {"every_n_train_steps": -2}}},
     r"cannot build lightning.modelcheckpoint \(.*PeriodicModelCheckpoint\): Invalid value for every_n_train_steps=-2"),
])
def test_callbacks_their_parameters_do_not_build_are_config_errors(tmp_path, lightning, message):
    with pytest.raises(ConfigError, match=message):
        build_callbacks(OmegaConf.create(lightning), _paths(tmp_path), OmegaConf.create(), SimpleNamespace())
