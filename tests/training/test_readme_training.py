"""The README's Training section, run as written on what a fresh clone holds (main.py and
configs/ in an empty working directory: no data/, no logs/), with a short --max_steps appended
so that the suite stays fast: the first block trains (and resumes); the second block's commands,
which need data a clone does not have, stop with one line naming it, and the image-folder one
trains once data/images is laid out as the README says."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.training.train_helpers import make_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_commands(block: int):
    out = subprocess.run([sys.executable, os.path.join(REPO, ".ci", "readme_commands.py"), "Training", str(block)],
                         capture_output=True, text=True, check=True).stdout
    return [re.sub(r"\s+#[^\"']*$", "", line).strip() for line in out.splitlines()]


@pytest.fixture
def clone(tmp_path):
    """A working directory with the files a fresh clone has that the commands name."""
    shutil.copy(os.path.join(REPO, "main.py"), tmp_path / "main.py")
    shutil.copytree(os.path.join(REPO, "configs"), tmp_path / "configs")
    return tmp_path


def shell(command: str, cwd, extra: str = ""):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("LDM_TRAIN_LOGDIR", "LDM_TRAIN_NOW", "LOCAL_RANK", "RANK", "WORLD_SIZE", "LDM_LPIPS_WEIGHTS"):
        env.pop(name, None)
    command = command.replace("python ", f"{sys.executable} ", 1) + " " + extra
    return subprocess.run(["bash", "-c", command], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)


def _last_step(run_dir) -> int:
    return torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)["global_step"]


@pytest.mark.slow
def test_the_training_examples_run_as_written_on_a_fresh_clone(clone):
    autoencoder, txt2img, resume = readme_commands(1)
    for command in (autoencoder, txt2img):
        proc = shell(command, clone, "--max_steps 2")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    runs = sorted(os.listdir(clone / "logs"))
    assert [r.split("_", 1)[1] for r in runs] == ["tiny-autoencoder-kl", "tiny-txt2img"]
    txt2img_run = clone / "logs" / runs[1]
    assert _last_step(txt2img_run) == 2 and _last_step(clone / "logs" / runs[0]) == 2
    proc = shell(resume, clone, "--max_steps 3")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _last_step(txt2img_run) == 3 and sorted(os.listdir(clone / "logs")) == runs
    assert os.listdir(txt2img_run / "checkpoints") == ["last.ckpt"]


def test_commands_that_need_data_say_what_in_one_line_and_write_nothing(clone):
    image_folder, original = readme_commands(2)
    for command, needs in ((image_folder, "image folder not found: data/images"),
                           (original, r"ldm.data.imagenet.ImageNetSRTrain reads ImageNet \(ILSVRC2012\)")):
        proc = shell(command, clone)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("main.py: error: ") and "Traceback" not in proc.stderr
        assert re.search(needs, proc.stderr.strip().splitlines()[-1])
        assert not (clone / "logs").exists()


@pytest.mark.slow
def test_the_image_folder_example_trains_on_the_documented_layout(clone):
    image_folder, _ = readme_commands(2)
    make_image_folder(clone / "data" / "images" / "some-folder", count=3, size=20)  # <name>.png + <name>.txt
    proc = shell(image_folder, clone, "--max_steps 2")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (run,) = os.listdir(clone / "logs")
    assert _last_step(clone / "logs" / run) == 2
