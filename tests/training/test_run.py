"""main.py's training run in-process (ldm.training.run): run layout, resume, crash checkpoint, bad input."""
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from ldm.training.checkpointing import AtomicCheckpointIO
from ldm.training.run import main, run
from tests.training.train_helpers import make_image_folder, tiny_image_model_config


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), count=4)


def _config_file(tmp_path, config, name="tiny.yaml"):
    path = tmp_path / name
    OmegaConf.save(config, path)
    return str(path)


def _only_run(logs):
    runs = [d for d in os.listdir(logs) if not d.startswith(".")]
    assert len(runs) == 1, runs
    return os.path.join(logs, runs[0])


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_writes_the_original_run_layout(tmp_path, images, capsys):
    config = tiny_image_model_config(images, max_steps=4,
                                     callbacks={"image_logger": {"params": {"disabled": False, "batch_frequency": 2}}})
    logs = str(tmp_path / "logs")
    result = run(["--base", _config_file(tmp_path, config), "-t", "-l", logs])
    rundir = _only_run(logs)
    assert os.path.basename(rundir).endswith("_tiny") and result.paths.logdir == rundir
    assert _load(os.path.join(rundir, "checkpoints", "last.ckpt"))["global_step"] == 4
    configs = sorted(os.listdir(os.path.join(rundir, "configs")))
    assert len(configs) == 2 and configs[0].endswith("-lightning.yaml") and configs[1].endswith("-project.yaml")
    saved = OmegaConf.load(os.path.join(rundir, "configs", configs[1]))
    assert saved.model.target == "tests.training.train_helpers.TinyImageModel" and "lightning" not in saved
    pngs = sorted(os.listdir(os.path.join(rundir, "images", "train")))
    assert "inputs_gs-000001_e-000000_b-000000.png" in pngs and "outputs_gs-000004_e-000001_b-000001.png" in pngs
    metrics = open(os.path.join(rundir, "csv", "version_0", "metrics.csv")).readline()
    assert "lr-Adam" in metrics and "train/loss" in metrics
    assert "Setting learning rate to 2.00e-03 = 1 (accumulate_grad_batches) * 1 (num_gpus) * 2 (batchsize)" \
        in capsys.readouterr().out
    assert result.model.learning_rate == pytest.approx(2e-3)
    assert isinstance(result.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_resume_continues_at_the_same_step_with_the_same_optimizer_and_ema(tmp_path, images):
    logs = str(tmp_path / "logs")
    run(["--base", _config_file(tmp_path, tiny_image_model_config(images, max_steps=3)), "-t", "-l", logs])
    rundir = _only_run(logs)
    saved = _load(os.path.join(rundir, "checkpoints", "last.ckpt"))
    record = str(tmp_path / "start.pt")
    result = run(["--resume", rundir, "-t", "--max_steps", "5",
                  "lightning.callbacks.record.target=tests.training.train_helpers.RecordTrainStart",
                  f"lightning.callbacks.record.params.path={record}"])
    start = _load(record)
    assert start["global_step"] == 3
    for key, value in saved["state_dict"].items():
        assert torch.equal(start["state_dict"][key], value), key
    assert start["state_dict"]["model_ema.num_updates"].item() == 3
    saved_opt, resumed_opt = saved["optimizer_states"][0]["state"], start["optimizer"]["state"]
    assert saved_opt.keys() == resumed_opt.keys()
    for index in saved_opt:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(saved_opt[index][name], resumed_opt[index][name])
    assert result.trainer.global_step == 5
    assert _load(os.path.join(rundir, "checkpoints", "last.ckpt"))["global_step"] == 5
    assert _only_run(logs) == rundir and len(os.listdir(os.path.join(rundir, "configs"))) == 4


def test_an_exception_during_training_leaves_last_ckpt_then_propagates(tmp_path, images):
    crash = {"target": "tests.training.train_helpers.RaiseAtStep", "params": {"step": 3}}
    config = tiny_image_model_config(images, max_steps=50, callbacks={"crash": crash})
    logs = str(tmp_path / "logs")
    with pytest.raises(RuntimeError, match="planned failure at step 3"):
        run(["--base", _config_file(tmp_path, config), "-t", "-l", logs])
    last = _load(os.path.join(_only_run(logs), "checkpoints", "last.ckpt"))
    assert last["global_step"] == 3 and "optimizer_states" in last


def test_a_run_resumed_by_relative_path_after_a_crash_keeps_writing_last_ckpt(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crash = {"target": "tests.training.train_helpers.RaiseAtStep", "params": {"step": 2}}
    config = tiny_image_model_config(images, max_steps=50, callbacks={"crash": crash})
    with pytest.raises(RuntimeError, match="planned failure at step 2"):
        run(["--base", _config_file(tmp_path, config), "-t", "-l", "logs"])
    rundir = os.path.relpath(_only_run("logs"))
    run(["--resume", rundir, "-t", "--max_steps", "4", "lightning.callbacks.crash.params.step=100"])
    checkpoints = sorted(os.listdir(os.path.join(rundir, "checkpoints")))
    assert "last-v1.ckpt" not in checkpoints  # a later --resume reads last.ckpt: it must be the newest
    assert _load(os.path.join(rundir, "checkpoints", "last.ckpt"))["global_step"] == 4


def test_a_failure_at_the_first_resumed_step_keeps_the_previous_last_ckpt(tmp_path, images):
    logs = str(tmp_path / "logs")
    run(["--base", _config_file(tmp_path, tiny_image_model_config(images, max_steps=2)), "-t", "-l", logs])
    rundir = _only_run(logs)
    before = open(os.path.join(rundir, "checkpoints", "last.ckpt"), "rb").read()
    with pytest.raises(RuntimeError, match="planned failure before the first step"):
        run(["--resume", rundir, "-t", "--max_steps", "9",
             "lightning.callbacks.crash.target=tests.training.train_helpers.RaiseAtTrainStart"])
    assert open(os.path.join(rundir, "checkpoints", "last.ckpt"), "rb").read() == before


def test_a_signal_checkpoint_mid_epoch_is_later_overwritten_by_modelcheckpoint(tmp_path, images):
    signal_at = {"target": "tests.training.train_helpers.SignalSelfAtStep", "params": {"step": 2}}
    config = tiny_image_model_config(images, max_steps=5, callbacks={"signal": signal_at})
    logs = str(tmp_path / "logs")
    result = run(["--base", _config_file(tmp_path, config), "-t", "-l", logs, "data.params.batch_size=1"])
    checkpoints = sorted(os.listdir(result.paths.ckptdir))
    assert checkpoints == ["epoch=000001.ckpt", "last.ckpt"]  # no last-v1.ckpt next to the signal's file
    assert _load(os.path.join(result.paths.ckptdir, "last.ckpt"))["global_step"] == 5


def test_validation_split_and_model_monitor_keep_the_best_checkpoints(tmp_path, images):
    config = tiny_image_model_config(images, max_steps=6)
    config.data.params.validation = config.data.params.train
    logs = str(tmp_path / "logs")
    result = run(["--base", _config_file(tmp_path, config), "-t", "-l", logs, "model.params.monitor=val/loss"])
    checkpoints = sorted(os.listdir(result.paths.ckptdir))
    assert len(checkpoints) == 4 and checkpoints[-1] == "last.ckpt"  # top 3 by val/loss + last
    assert "val/loss" in result.trainer.callback_metrics


def test_test_split_runs_after_training_unless_no_test(tmp_path, images):
    config = tiny_image_model_config(images, max_steps=2)
    config.data.params.test = config.data.params.train
    path = _config_file(tmp_path, config)
    tested = run(["--base", path, "-t", "-l", str(tmp_path / "a")])
    assert "test/loss" in tested.trainer.callback_metrics
    untested = run(["--base", path, "-t", "-l", str(tmp_path / "b"), "--no-test"])
    assert "test/loss" not in untested.trainer.callback_metrics


def test_debug_runs_are_moved_to_debug_runs(tmp_path, images):
    logs = tmp_path / "logs"
    result = run(["--base", _config_file(tmp_path, tiny_image_model_config(images, max_steps=1)), "-t", "-d",
                  "-l", str(logs)])
    assert os.listdir(logs) == ["debug_runs"]
    assert os.path.dirname(result.paths.logdir) == str(logs / "debug_runs")
    assert os.path.isfile(os.path.join(result.paths.logdir, "checkpoints", "last.ckpt"))


@pytest.mark.parametrize("extra, message", [
    (["--base", "MISSING"], "config file not found: .*missing.yaml"),
    (["model.target=ldm.no_such_module.Model"], "unknown target 'ldm.no_such_module.Model' in model"),
    (["model.params.image_key"], "malformed override 'model.params.image_key': expected key=value"),
    (["data.params.train.params.root=EMPTY"], "no images .* found in .*empty"),
    (["model.params.not_a_param=1"], "cannot build model .*not_a_param"),
    (["--resume", "MISSING"], "cannot resume: .*missing.yaml does not exist"),
    (["--accelerator", "gpu", "--devices", "64"], "invalid Trainer settings"),
    (["--precision", "17"], "invalid Trainer settings: Precision '17' is invalid"),
])
def test_bad_input_exits_2_with_one_line_and_creates_no_run(tmp_path, images, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    base = ["--base", _config_file(tmp_path, tiny_image_model_config(images)), "-t", "-l", str(tmp_path / "logs")]
    extra = [e.replace("MISSING", str(tmp_path / "missing.yaml")).replace("EMPTY", str(tmp_path / "empty"))
             for e in extra]
    assert main(base + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main.py: error: "), err
    assert re.search(message, err[0]), err[0]
    assert not os.path.exists(tmp_path / "logs") or os.listdir(tmp_path / "logs") == []
