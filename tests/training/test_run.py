"""main.py's training run in-process (ldm.training.run): run layout, resume, crash checkpoint, bad input."""
import json
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from ldm.training.checkpointing import AtomicCheckpointIO
from ldm.training.run import main, run
from tests.training.train_helpers import RunsCode, make_image_folder, tiny_image_model_config, training_checkpoint


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
    (["lightning.callbacks.image_logger.params.batch_frequency=0"], "cannot build lightning.callbacks.image_logger"),
    (["lightning.modelcheckpoint.params.every_n_train_steps=-2"], "cannot build lightning.modelcheckpoint"),
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


def _probe(tmp_path, step):
    path = tmp_path / "probe.json"
    return path, {"probe": {"target": "tests.training.train_helpers.LastCheckpointProbe",
                            "params": {"step": step, "path": str(path)}}}


def test_last_ckpt_is_written_on_schedule_whatever_the_config_monitors(tmp_path, images):
    # Lightning 2 defers a scheduled save until the monitored val/loss exists: here validation
    # first runs at step 4, so a run killed at step 3 had nothing.
    probe, callbacks = _probe(tmp_path, 3)
    config = tiny_image_model_config(images, max_steps=5, callbacks=callbacks, modelcheckpoint={
        "params": {"every_n_train_steps": 2}}, trainer={"val_check_interval": 4, "limit_val_batches": 1,
                                                        "num_sanity_val_steps": 0})
    config.data.params.validation = config.data.params.train
    logs = str(tmp_path / "logs")
    result = run(["--base", _config_file(tmp_path, config), "-t", "-l", logs, "model.params.monitor=val/loss",
                  "data.params.batch_size=1"])
    assert json.loads(probe.read_text()) == {"last_ckpt_step": 2}
    checkpoints = sorted(os.listdir(result.paths.ckptdir))
    assert _load(os.path.join(result.paths.ckptdir, "last.ckpt"))["global_step"] == 5  # the final step too
    assert len(checkpoints) == 2 and checkpoints[0].startswith("epoch=")  # the top-k one, once validation ran


def test_last_ckpt_is_written_on_schedule_without_validation_data(tmp_path, images):
    probe, callbacks = _probe(tmp_path, 3)
    config = tiny_image_model_config(images, max_steps=4, callbacks=callbacks,
                                     modelcheckpoint={"params": {"every_n_train_steps": 2}})
    run(["--base", _config_file(tmp_path, config), "-t", "-l", str(tmp_path / "logs"),
         "model.params.monitor=val/loss", "data.params.batch_size=1"])
    assert json.loads(probe.read_text()) == {"last_ckpt_step": 2}


def test_resume_continues_from_the_newest_complete_checkpoint_not_an_older_last_ckpt(tmp_path, images, capsys):
    logs = str(tmp_path / "logs")
    run(["--base", _config_file(tmp_path, tiny_image_model_config(images, max_steps=2)), "-t", "-l", logs])
    rundir = _only_run(logs)
    last = os.path.join(rundir, "checkpoints", "last.ckpt")
    older = open(last, "rb").read()
    run(["--resume", rundir, "-t", "--max_steps", "4"])
    newer = os.path.join(rundir, "checkpoints", "newer.ckpt")
    os.rename(last, newer)
    with open(last, "wb") as handle:  # e.g. a run killed before last.ckpt was rewritten
        handle.write(older)
    record = str(tmp_path / "start.pt")
    capsys.readouterr()
    run(["--resume", rundir, "-t", "--max_steps", "6",
         "lightning.callbacks.record.target=tests.training.train_helpers.RecordTrainStart",
         f"lightning.callbacks.record.params.path={record}"])
    assert _load(record)["global_step"] == 4
    assert f"Resuming from {newer} (step 4): last.ckpt is at step 2" in capsys.readouterr().out
    assert _load(last)["global_step"] == 6


def test_a_moved_run_resumes_without_duplicates_and_without_stale_temporaries(tmp_path, images):
    config = tiny_image_model_config(images, max_steps=2, modelcheckpoint={"params": {"every_n_train_steps": 2}})
    run(["--base", _config_file(tmp_path, config), "-t", "-l", str(tmp_path / "logs")])
    moved = str(tmp_path / "elsewhere")
    os.rename(_only_run(str(tmp_path / "logs")), moved)
    ckptdir = os.path.join(moved, "checkpoints")
    with open(os.path.join(ckptdir, ".last.ckpt.x1y2z3w4.tmp"), "wb") as handle:  # a save killed mid-write
        handle.write(b"partial")
    run(["--resume", moved, "-t", "--max_steps", "4"])
    assert sorted(os.listdir(ckptdir)) == ["epoch=000001.ckpt", "last.ckpt"]  # no last-v1.ckpt, no .tmp
    assert _load(os.path.join(ckptdir, "last.ckpt"))["global_step"] == 4


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main.py: error: "), err
    return err[0]


def _tree(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "no complete checkpoint .*last.ckpt: cannot read checkpoint .*corrupted, truncated"),
    ("hostile", "no complete checkpoint .*last.ckpt: .*not plain tensors"),
    ("weights", "no complete checkpoint .*last.ckpt: weights only"),
])
def test_a_damaged_checkpoint_on_resume_is_one_line_and_changes_nothing(tmp_path, images, capsys, damage, message):
    logs = str(tmp_path / "logs")
    run(["--base", _config_file(tmp_path, tiny_image_model_config(images, max_steps=2)), "-t", "-l", logs])
    rundir = _only_run(logs)
    for name in os.listdir(os.path.join(rundir, "checkpoints")):
        if name != "last.ckpt":
            os.remove(os.path.join(rundir, "checkpoints", name))
    last = os.path.join(rundir, "checkpoints", "last.ckpt")
    marker = tmp_path / "ran"
    if damage == "truncate":
        with open(last, "r+b") as handle:
            handle.truncate(os.path.getsize(last) - 100)
    elif damage == "hostile":
        torch.save({"state_dict": {"w": torch.ones(1)}, "global_step": 3, "x": RunsCode(str(marker))}, last)
    else:
        training_checkpoint(last, 3, weights_only=True)
    before = _tree(rundir)
    capsys.readouterr()
    assert main(["--resume", rundir, "-t", "--max_steps", "4"]) == 2
    assert re.search(message, _one_error_line(capsys))
    assert _tree(rundir) == before and not marker.exists()
    assert main(["--resume", last, "-t", "--max_steps", "4"]) == 2  # the file named: the same, one line
    _one_error_line(capsys)


def test_without_t_main_py_only_tests_and_says_when_there_is_nothing_to_do(tmp_path, images, capsys):
    path = _config_file(tmp_path, tiny_image_model_config(images, max_steps=2))
    logs = str(tmp_path / "logs")
    assert main(["--base", path, "-l", logs]) == 2
    assert "nothing to do: without -t main.py does not train" in _one_error_line(capsys)
    assert not os.path.exists(logs)
    run(["--base", path, "-t", "-l", logs])
    rundir = _only_run(logs)
    before = _tree(rundir)
    capsys.readouterr()
    assert main(["--resume", rundir]) == 2
    line = _one_error_line(capsys)
    assert "the config has no test split" in line and f"python main.py --resume {rundir} -t" in line
    assert main(["--resume", rundir, "-t"]) == 2  # max_steps 2 reached: nothing to train either
    assert "nothing to train: " in _one_error_line(capsys) and _tree(rundir) == before


def test_resume_without_t_tests_the_checkpoint_weights(tmp_path, images):
    config = tiny_image_model_config(images, max_steps=3)
    config.data.params.test = config.data.params.train
    logs = str(tmp_path / "logs")
    trained = run(["--base", _config_file(tmp_path, config), "-t", "-l", logs, "--no-test"])
    tested = run(["--resume", trained.paths.logdir])
    assert tested.trainer.global_step == 0  # not trained
    for key, value in trained.model.state_dict().items():
        assert torch.equal(tested.model.state_dict()[key], value), key
    assert "test/loss" in tested.trainer.callback_metrics


@pytest.mark.parametrize("extra, message", [
    (["data.params.batch_size=abc"], r"override data.params.batch_size=abc: the config has a whole number there "
                                     r"\(2\), not text"),
    (["lightning.trainer.max_steps=[3]"], r"override lightning.trainer.max_steps=\[3\]: the config has a whole "
                                          r"number there \(4\), not a list"),
    (["key=abc"], "override key=...: the config has no section 'key'"),
    (["data.params.num_workers=-1"], "data.params.num_workers must be a whole number >= 0, got -1"),
    (["data.params.train.target=ldm.data.landscapes.RFWTrain"],
     r"data.params.train: ldm.data.landscapes.RFWTrain reads the RFW landscapes, and ldm has no module "
     "ldm.data.landscapes yet"),
    (["data.params.train.params.size=-3"], r"size must be a whole number of pixels >= 1 \(or null\), got -3"),
])
def test_values_of_the_wrong_kind_are_one_line_before_anything_is_built(tmp_path, images, capsys, extra, message):
    base = ["--base", _config_file(tmp_path, tiny_image_model_config(images)), "-t", "-l", str(tmp_path / "logs")]
    assert main(base + extra) == 2
    assert re.search(message, _one_error_line(capsys))
    assert not os.path.exists(tmp_path / "logs") or os.listdir(tmp_path / "logs") == []


def test_an_unreadable_image_met_while_training_is_one_line_naming_it(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "images", count=2)
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    config = tiny_image_model_config(folder, max_steps=50)
    assert main(["--base", _config_file(tmp_path, config), "-t", "-l", str(tmp_path / "logs"),
                 "data.params.num_workers=1"]) == 2
    line = _one_error_line(capsys)
    assert re.fullmatch(r"main.py: error: cannot read image .*broken.png \(.*\): remove or replace it", line), line


def test_settings_lightning_refuses_only_once_it_sees_the_data_are_one_line(tmp_path, images, capsys):
    config = tiny_image_model_config(images, max_steps=5, trainer={"val_check_interval": 100})
    config.data.params.validation = config.data.params.train  # 2 batches an epoch, validation every 100
    assert main(["--base", _config_file(tmp_path, config), "-t", "-l", str(tmp_path / "logs")]) == 2
    assert re.fullmatch(r"main.py: error: Lightning refused the settings for this run: `val_check_interval` \(100\) "
                        r"must be less than or equal to the number of the training batches \(2\)\..*",
                        _one_error_line(capsys))


def test_ctrl_c_saves_last_ckpt_and_exits_130_with_one_line(tmp_path, images, capsys):
    stop = {"target": "tests.training.train_helpers.InterruptAtStep", "params": {"step": 3}}
    config = tiny_image_model_config(images, max_steps=50, callbacks={"stop": stop})
    logs = str(tmp_path / "logs")
    assert main(["--base", _config_file(tmp_path, config), "-t", "-l", logs]) == 130
    rundir = _only_run(logs)
    last = os.path.join(os.path.abspath(rundir), "checkpoints", "last.ckpt")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"main.py: interrupted by Ctrl-C: saved {last} at step 3; continue with: python main.py --resume {rundir} -t")
    assert _load(last)["global_step"] == 3


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_file(tmp_path, images, capsys, monkeypatch):
    from ldm.training import checkpointing

    monkeypatch.setattr(checkpointing, "open", lambda path, mode: open(os.devnull.replace("null", "full"), mode),
                        raising=False)  # every checkpoint write goes to /dev/full: ENOSPC from the OS
    config = tiny_image_model_config(images, max_steps=50, modelcheckpoint={"params": {"every_n_train_steps": 2}})
    logs = str(tmp_path / "logs")
    assert main(["--base", _config_file(tmp_path, config), "-t", "-l", logs]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"main.py: error: no space left on the device writing .*checkpoints/epoch=000000.ckpt: "
                        r"checkpoints are written atomically, .*--resume", line), line
    assert os.listdir(os.path.join(_only_run(logs), "checkpoints")) == []
