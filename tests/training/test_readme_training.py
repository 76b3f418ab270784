"""The README's Training section, run as written on what a fresh clone holds (main.py and
configs/ in an empty working directory: no data/, no logs/), with a short --max_steps appended
so that the suite stays fast. The first block trains and resumes; the second block's commands,
which need data a clone does not have, stop with one line naming it, and the image-folder one
trains once data/images is laid out as the README says.

Each line goes through bash (which expands ``$(...)``) into its argument list; the first command
runs as a program, the others call main.py's ``main`` in this process, which saves a start-up
of torch and Lightning per command."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from ldm.training.run import main
from tests.training.train_helpers import make_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_commands(block: int):
    out = subprocess.run([sys.executable, os.path.join(REPO, ".ci", "readme_commands.py"), "Training", str(block)],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def argv_of(command: str, cwd) -> list:
    """The arguments of ``python main.py ...`` as bash passes them (expansions done, comment dropped)."""
    words = subprocess.run(["bash", "-c", "printf '%s\\0' " + command], cwd=str(cwd), capture_output=True,
                           text=True, check=True).stdout.split("\0")[:-1]
    assert words[:2] == ["python", "main.py"], command
    return words[2:]


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A working directory with the files a fresh clone has that the commands name."""
    shutil.copy(os.path.join(REPO, "main.py"), tmp_path / "main.py")
    shutil.copytree(os.path.join(REPO, "configs"), tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for name in ("LDM_TRAIN_LOGDIR", "LDM_TRAIN_NOW", "LOCAL_RANK", "RANK", "WORLD_SIZE", "LDM_LPIPS_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run_as_program(argv, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "main.py"] + argv, cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=600)


def _last_step(run_dir) -> int:
    return torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)["global_step"]


@pytest.mark.slow
def test_the_training_examples_run_as_written_on_a_fresh_clone(clone):
    autoencoder, txt2img, resume = readme_commands(1)
    proc = run_as_program(argv_of(autoencoder, clone) + ["--max_steps", "2"], clone)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert main(argv_of(txt2img, clone) + ["--max_steps", "2"]) == 0
    runs = sorted(os.listdir(clone / "logs"))
    assert [r.split("_", 1)[1] for r in runs] == ["tiny-autoencoder-kl", "tiny-txt2img"]
    txt2img_run = clone / "logs" / runs[1]
    assert _last_step(clone / "logs" / runs[0]) == 2 and _last_step(txt2img_run) == 2
    assert main(argv_of(resume, clone) + ["--max_steps", "3"]) == 0
    assert _last_step(txt2img_run) == 3 and sorted(os.listdir(clone / "logs")) == runs
    assert os.listdir(txt2img_run / "checkpoints") == ["last.ckpt"]


def test_commands_that_need_data_say_what_in_one_line_then_train_on_the_documented_layout(clone, capsys):
    image_folder, original = readme_commands(2)
    for command, needs in ((image_folder, "image folder not found: data/images"),
                           (original, r"ImageNet train images not found: expected data/imagenet/train/<synset>/")):
        assert main(argv_of(command, clone)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("main.py: error: ") and re.search(needs, err[0]), err
        assert not (clone / "logs").exists()
    make_image_folder(clone / "data" / "images" / "some-folder", count=3, size=20)  # <name>.png + <name>.txt
    assert main(argv_of(image_folder, clone) + ["--max_steps", "2"]) == 0
    (run,) = os.listdir(clone / "logs")
    assert _last_step(clone / "logs" / run) == 2
