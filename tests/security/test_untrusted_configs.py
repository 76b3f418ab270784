"""A config the user did not name (``<name>.yaml`` beside ``--ckpt``) cannot run code or exhaust
memory (issue 19): it may build only ldm's model classes and a few torch blocks, its YAML is
bounded, and the script says which config it picked. An explicit ``--config`` stays the user's
own code: it runs, with a one-line note when it builds something outside that list."""
import shutil
import sys

import pytest
from omegaconf import OmegaConf

from ldm.inference.errors import UsageError
from ldm.inference.loading import ModelPaths, choose_model_paths, load_model, read_config
from tests.scripts.helpers import main_exit_code


@pytest.fixture()
def download(tmp_path, tiny_models):
    """A "downloaded" checkpoint (the tiny txt2img model) and the config it fits, to edit."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    ckpt = folder / "cool.ckpt"
    shutil.copy(tiny_models["txt2img"].ckpt, ckpt)
    return ckpt, OmegaConf.load(tiny_models["txt2img"].config)


def _beside(ckpt, config) -> str:
    path = ckpt.with_suffix(".yaml")
    OmegaConf.save(config, path) if not isinstance(config, str) else path.write_text(config)
    return str(path)


def _marker_command(marker) -> dict:
    return {"args": [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]}


def test_a_config_beside_the_checkpoint_cannot_run_a_program(download, tmp_path, capsys):
    ckpt, config = download
    marker = tmp_path / "ran.txt"
    config.model.params.first_stage_config = {"target": "subprocess.run", "params": _marker_command(marker)}
    _beside(ckpt, config)
    code = main_exit_code("txt2img.py", ["--ckpt", str(ckpt), "--outdir", str(tmp_path / "out"), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert f"using {ckpt.with_suffix('.yaml')}, found beside {ckpt}" in err
    assert "names subprocess.run, which is not a model class of ldm; refusing to build it" in err.splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target, params", [
    ("os.system", {"command": "true"}),
    ("ldm.util.checkpoints.save_checkpoint", {"state_dict": {}, "path": "MARKER"}),   # a function of ours
    ("ldm.models.diffusion.ddpm.LambdaLR", {}),         # a torch class imported into a model module
    ("ldm.models.diffusion.ddpm.__getattr__", {"name": "LatentDiffusion"}),
    ("builtins.exec", {}),
], ids=["os.system", "ldm-function-that-writes", "imported-class", "module-getattr", "exec"])
def test_only_model_classes_are_built_from_an_untrusted_config(download, tmp_path, monkeypatch, target, params):
    monkeypatch.chdir(tmp_path)
    ckpt, config = download
    params = {k: (str(tmp_path / "marker.ckpt") if v == "MARKER" else v) for k, v in params.items()}
    config.model.params.cond_stage_config = {"target": target, "params": params}
    _beside(ckpt, config)
    paths = choose_model_paths("txt2img", None, str(ckpt))
    with pytest.raises(UsageError, match=r"names .*which is not a model class of ldm") as err:
        load_model(read_config(paths.config), paths, device=None, ema=None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "marker.ckpt").exists()


def test_an_interpolated_target_is_checked_once_resolved(download, monkeypatch):
    ckpt, config = download
    monkeypatch.setenv("LDM_TEST_TARGET", "os.system")
    config_path = _beside(ckpt, config)
    text = open(config_path).read().replace("target: ldm.models.autoencoder.AutoencoderKL",
                                            "target: ${oc.env:LDM_TEST_TARGET}")
    _beside(ckpt, text)
    paths = choose_model_paths("txt2img", None, str(ckpt))
    assert paths.config == config_path and not paths.config_trusted
    with pytest.raises(UsageError, match="names os.system"):
        load_model(read_config(config_path), paths, device=None, ema=None)


def test_a_harmless_config_beside_the_checkpoint_still_loads(download, capsys):
    ckpt, config = download
    config_path = _beside(ckpt, config)
    paths = choose_model_paths("txt2img", None, str(ckpt))
    assert paths == (config_path, str(ckpt), False)
    assert "may build only ldm model classes" in capsys.readouterr().err
    model = load_model(read_config(config_path), paths, device=None, ema=None)
    assert type(model).__name__ == "LatentDiffusion"


def test_an_explicit_config_is_trusted_with_a_note_naming_what_it_builds(download, tmp_path, capsys):
    ckpt, config = download
    config.model.params.scheduler_config = {"target": "my_lab.schedules.Warmup", "params": {}}
    named = tmp_path / "mine.yaml"
    OmegaConf.save(config, named)
    load_model(read_config(str(named)), ModelPaths(str(named), str(ckpt)), device=None, ema=None)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {named} builds my_lab.schedules.Warmup, outside ldm's model classes; it runs as your "
                     "own code because you named it"]
    _beside(ckpt, config)  # the same file found beside the checkpoint is not trusted
    paths = choose_model_paths("txt2img", None, str(ckpt))
    with pytest.raises(UsageError, match="names my_lab.schedules.Warmup"):
        load_model(read_config(paths.config), paths, device=None, ema=None)


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    model = f"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params: *a{levels - 1}\n"
    return "\n".join(lines) + "\n" + model


@pytest.mark.parametrize("yaml_text, message", [
    (_billion_laughs(), "expands to more than 100000 entries"),
    ("model: &loop\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params: *loop\n",
     "expands to more than 100000 entries"),
    ("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n" + "# padding\n" * 200_000,
     "larger than a config"),
    ("model: " + "[" * 100_000 + "]" * 100_000 + "\n", "not a readable YAML config"),
], ids=["billion-laughs", "self-reference", "2-MB-file", "nested-100000-deep"])
def test_a_config_beside_the_checkpoint_that_would_exhaust_memory_is_refused(download, yaml_text, message):
    ckpt, _ = download
    _beside(ckpt, yaml_text)
    with pytest.raises(UsageError, match=message) as err:
        choose_model_paths("txt2img", None, str(ckpt))
    assert "\n" not in str(err.value)


def test_a_python_tag_in_a_config_beside_the_checkpoint_runs_nothing(download, tmp_path, capsys):
    ckpt, _ = download
    marker = tmp_path / "tag.txt"
    _beside(ckpt, f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    code = main_exit_code("txt2img.py", ["--ckpt", str(ckpt), "--outdir", str(tmp_path / "out")])
    assert code == 2 and not marker.exists()
    assert "cannot read" in capsys.readouterr().err.splitlines()[-1]
