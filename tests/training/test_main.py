"""main.py as a program: exit code 2 without traceback on bad input, SIGUSR1 checkpoints while
training goes on, and DDP over two CPU processes (gloo)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from tests.training.train_helpers import make_image_folder, make_tiny_clip, tiny_image_model_config, tiny_txt2img_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("LDM_TRAIN_LOGDIR", "LDM_TRAIN_NOW", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(name, None)
    return env


def _main(args):
    return [sys.executable, os.path.join(REPO, "main.py")] + list(args)


def _wait_for(condition, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"main.py exited ({proc.returncode}) while waiting for {what}:\n"
                                 + proc.stdout.read()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def test_bad_input_exits_with_code_2_and_one_line_without_traceback(tmp_path):
    proc = subprocess.run(_main(["--base", str(tmp_path / "missing.yaml"), "-t", "-l", str(tmp_path / "logs")]),
                          capture_output=True, text=True, cwd=str(tmp_path), env=_env(), timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"main.py: error: config file not found: {tmp_path / 'missing.yaml'}"]
    assert not (tmp_path / "logs").exists()


def test_sigusr1_writes_last_ckpt_and_training_continues(tmp_path):
    images = make_image_folder(tmp_path / "images", count=4)
    marker = str(tmp_path / "step.json")
    config = tiny_image_model_config(images, max_steps=100000, callbacks={"marker": {
        "target": "tests.training.train_helpers.StepMarker", "params": {"path": marker, "delay": 0.05}}},
        modelcheckpoint={"params": {"save_last": False}})  # so that only the signal writes last.ckpt
    OmegaConf.save(config, tmp_path / "tiny.yaml")
    logs = tmp_path / "logs"
    proc = subprocess.Popen(_main(["--base", str(tmp_path / "tiny.yaml"), "-t", "-l", str(logs)]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
                            env=_env())
    try:
        _wait_for(lambda: (_read_json(marker) or {}).get("step", 0) >= 2, 240, "training to start", proc)
        rundir = (_read_json(marker))["logdir"]
        last = os.path.join(rundir, "checkpoints", "last.ckpt")
        assert not os.path.exists(last)
        proc.send_signal(signal.SIGUSR1)
        _wait_for(lambda: os.path.exists(last), 60, "last.ckpt after SIGUSR1", proc)
        saved_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
        assert saved_step >= 2
        _wait_for(lambda: (_read_json(marker) or {}).get("step", 0) >= saved_step + 3, 60,
                  "training to go on after the checkpoint", proc)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_the_text_ldm_in_one_run_directory(tmp_path):
    images = make_image_folder(tmp_path / "images", count=4)
    marker = str(tmp_path / "rank{rank}.json")
    args = tiny_txt2img_args(make_tiny_clip(tmp_path / "clip")) + [
        "-t", "-l", str(tmp_path / "logs"), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
        "--max_steps", "3", f"data.params.train.params.root={images}", "data.params.num_workers=0",
        "data.params.batch_size=2", "lightning.trainer.enable_progress_bar=false",
        "lightning.callbacks.image_logger.params.disabled=true",
        "lightning.callbacks.marker.target=tests.training.train_helpers.StepMarker",
        f"lightning.callbacks.marker.params.path={marker}"]
    proc = subprocess.run(_main(args),
                          capture_output=True, text=True, cwd=str(tmp_path), env=_env(), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [_read_json(marker.format(rank=r)) for r in (0, 1)]
    assert all(r is not None and r["world_size"] == 2 and r["step"] == 3 for r in ranks), ranks
    assert ranks[0]["pid"] != ranks[1]["pid"] and ranks[0]["logdir"] == ranks[1]["logdir"]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]  # gradients were all-reduced
    assert os.listdir(tmp_path / "logs") == [os.path.basename(ranks[0]["logdir"])]
    last = torch.load(os.path.join(ranks[0]["logdir"], "checkpoints", "last.ckpt"), weights_only=True)
    assert last["global_step"] == 3
    # 2 processes x batch 2 x base lr 1e-4
    assert "Setting learning rate to 4.00e-04" in proc.stdout


@pytest.mark.slow
def test_a_run_killed_then_stopped_by_sigterm_loses_at_most_the_steps_since_the_last_schedule(tmp_path):
    """SIGKILL at step >= 7 of a run that monitors a metric it never computes still leaves the
    step-6 last.ckpt; resuming cleans the killed save's temporary file, and SIGTERM then saves
    last.ckpt, says so in one line and exits 143 (not 0: a scheduler must not record success)."""
    images = make_image_folder(tmp_path / "images", count=4)
    marker = str(tmp_path / "step.json")
    config = tiny_image_model_config(images, max_steps=100000, callbacks={"marker": {
        "target": "tests.training.train_helpers.StepMarker", "params": {"path": marker, "delay": 0.1}}},
        modelcheckpoint={"params": {"every_n_train_steps": 3}})
    OmegaConf.save(config, tmp_path / "tiny.yaml")
    args = ["--base", str(tmp_path / "tiny.yaml"), "-t", "-l", str(tmp_path / "logs"), "model.params.monitor=val/loss"]
    proc = subprocess.Popen(_main(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            cwd=str(tmp_path), env=_env())
    try:
        _wait_for(lambda: (_read_json(marker) or {}).get("step", 0) >= 7, 240, "step 7", proc)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    rundir = _read_json(marker)["logdir"]
    ckptdir = os.path.join(rundir, "checkpoints")
    last = os.path.join(ckptdir, "last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] >= 6
    stale = os.path.join(ckptdir, ".last.ckpt.k1ll3d_0.tmp")  # what a save killed mid-write leaves
    with open(stale, "wb") as handle:
        handle.write(b"partial")

    resumed = subprocess.Popen(_main(["--resume", rundir, "-t"]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=str(tmp_path), env=_env())
    try:
        start = torch.load(last, weights_only=True)["global_step"]
        def resumed_to(step):
            record = _read_json(marker) or {}
            return record.get("pid") == resumed.pid and record.get("step", 0) >= step

        _wait_for(lambda: resumed_to(start + 2), 240, "the resumed run", resumed)
        assert not os.path.exists(stale)
        resumed.send_signal(signal.SIGTERM)
        _, err = resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert resumed.returncode == 143, err[-3000:]
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert stopped_at >= start + 2 and stopped_at == _read_json(marker)["step"]
    assert "Traceback" not in err  # (Lightning's own progress notes go to stderr before it)
    assert err.strip().splitlines()[-1] == (f"main.py: interrupted by SIGTERM: saved {last} at step {stopped_at}; "
                                            f"continue with: python main.py --resume {rundir} -t")
    assert sorted(n for n in os.listdir(ckptdir)) == ["last.ckpt"]
