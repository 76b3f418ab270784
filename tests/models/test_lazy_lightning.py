"""ldm.models.lazy_lightning: the models are plain nn.Modules in a process without Lightning and
LightningModules once it is imported, under the original class paths either way."""
import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.models.autoencoder import AutoencoderKL
from ldm.models.diffusion.ddpm import DDPM, DiffusionWrapper, LatentDiffusion
from ldm.models.lazy_lightning import lightning_class
from ldm.util import instantiate_from_config
from tests.tiny_configs import tiny_autoencoder_config, tiny_ddpm_config, tiny_latent_diffusion_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_python(source: str) -> str:
    """stdout of ``source`` run in a fresh interpreter from the repository root."""
    done = subprocess.run([sys.executable, "-c", source], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_lightning_the_models_are_plain_modules_and_lightning_stays_unimported():
    out = run_python(
        "import sys, torch\n"
        "from ldm.util import instantiate_from_config\n"
        "from ldm.models.autoencoder import AutoencoderKL\n"
        "from ldm.models.diffusion.ddpm import DiffusionWrapper, LatentDiffusion\n"
        "from tests.tiny_configs import tiny_latent_diffusion_config\n"
        "model = instantiate_from_config(tiny_latent_diffusion_config())\n"
        "print(type(model) is LatentDiffusion, type(model.model) is DiffusionWrapper,\n"
        "      type(model.first_stage_model) is AutoencoderKL)\n"
        "print(model.device, model.dtype, model.double().dtype)\n"
        "print('pytorch_lightning' in sys.modules, 'torch._dynamo' in sys.modules)\n")
    assert out.splitlines()[-3:] == ["True True True",
                                "cpu torch.float32 torch.float64", "False False"]


def test_with_lightning_loaded_each_model_is_a_lightning_module_of_its_class():
    for config, cls in [(tiny_latent_diffusion_config(), LatentDiffusion), (tiny_ddpm_config(), DDPM),
                        (tiny_autoencoder_config(), AutoencoderKL)]:
        model = instantiate_from_config(config)
        assert isinstance(model, pl.LightningModule) and isinstance(model, cls)
        assert type(model) is lightning_class(cls)
        assert (type(model).__name__, type(model).__module__) == (cls.__name__, cls.__module__)
        assert type(model).training_step is cls.training_step  # the model's hooks, not Lightning's defaults
    assert isinstance(model.encoder, nn.Module) and not isinstance(model.encoder, pl.LightningModule)


def test_lightning_keeps_its_own_device_and_dtype_and_the_wrapper_is_one_too():
    model = instantiate_from_config(tiny_latent_diffusion_config())
    assert isinstance(model.model, DiffusionWrapper) and isinstance(model.model, pl.LightningModule)
    model.to(torch.float64)
    assert (model.device, model.dtype) == (torch.device("cpu"), torch.float64)
    assert type(model).device is pl.LightningModule.device


def test_lightning_class_is_made_once_and_leaves_lightning_modules_alone():
    assert lightning_class(LatentDiffusion) is lightning_class(LatentDiffusion)
    assert lightning_class(lightning_class(DDPM)) is lightning_class(DDPM)


def test_pickles_and_copies_under_the_original_class_path():
    model = instantiate_from_config(tiny_ddpm_config())
    data = pickle.dumps(model)
    assert b"ldm.models.diffusion.ddpm" in data and b"DDPM" in data
    clone = copy.deepcopy(model)  # the same __reduce_ex__ as pickling (pickle.loads is banned in this repo)
    assert type(clone) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), model.state_dict().values()))


def test_a_pickled_lightning_model_unpickles_without_lightning_as_a_plain_module(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(instantiate_from_config(tiny_ddpm_config())))
    out = run_python(
        "import pickle, sys\n"
        "from ldm.models.diffusion.ddpm import DDPM\n"
        f"model = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "print(type(model) is DDPM, 'pytorch_lightning' in sys.modules)\n")
    assert out.split()[-2:] == ["True", "False"]


def test_load_from_checkpoint_builds_a_lightning_module_with_the_saved_weights(tmp_path):
    config = tiny_autoencoder_config()
    model = instantiate_from_config(config)
    path = tmp_path / "ae.ckpt"
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": pl.__version__}, path)
    loaded = AutoencoderKL.load_from_checkpoint(str(path), **config.params)
    assert isinstance(loaded, pl.LightningModule) and isinstance(loaded, AutoencoderKL)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
