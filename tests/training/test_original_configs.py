"""Every training config in configs/ (every YAML with a ``data:`` section; new ones are found by the
walk) either trains two steps through main.py's ``run`` on tiny fake data sets laid out as its data
modules read them (docs/DATA.md; made here under ``$LDM_DATA_ROOT``), or stops with one line naming
the data it needs (webdataset shards without the webdataset package).

Big models are shrunk by the ``key=value`` overrides :func:`shrink_overrides` lists (a UNet wider than
64 channels to 32 channels and two levels, an autoencoder wider than 64 channels to 32 channels, one
residual block and no attention, OpenCLIP ViT-H to ViT-B-32, image sizes to 8 latent pixels); models
that are already small (the shapes models, which also load the shipped checkpoints) run as they are,
on 8 examples of the shapes world.
A config without a ``model:`` section is a data overlay: it runs after the tiny autoencoder example,
as the README shows. A data module the walk has no fake data for fails the test: add a maker below.
"""
import json
import os
import re
import tarfile
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.training.run import main, run
from ldm.util import in_cwd_or_repository
from ldm.util.config import resolve_target_alias

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAY_BASE = os.path.join(REPO, "configs", "examples", "tiny-autoencoder-kl.yaml")
FAKE_IMAGE_SIZE = (72, 96)  # height, width: larger than every shrunk image size
LATENT_SIZE = 8
SMALL_WIDTH = 64            # models at most this wide run unshrunk
WEBDATASET_MODULE = "ldm.data.laion.WebDataModuleFromConfig"


def training_configs() -> List[str]:
    found = []
    for directory, _, files in os.walk(os.path.join(REPO, "configs")):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                path = os.path.join(directory, name)
                config = OmegaConf.load(path)
                if OmegaConf.is_dict(config) and "data" in config:
                    found.append(os.path.relpath(path, REPO))
    return sorted(found)


# ---------------------------------------------------------------- fake data, in each module's layout

def _save_image(path: str, rng: np.random.Generator) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, FAKE_IMAGE_SIZE + (3,), dtype=np.uint8)).save(path)
    return path


def _write_list(path: str, lines: List[str]) -> None:
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def make_imagenet(root: str, rng) -> None:
    for split in ("train", "val"):
        for synset in ("n01440764", "n01443537"):
            for i in range(2):
                _save_image(os.path.join(root, "imagenet", split, synset, f"{synset}_{i}.JPEG"), rng)


def make_lsun(root: str, rng) -> None:
    for folder, stem in (("churches", "church_outdoor"), ("bedrooms", "bedrooms"), ("cats", "cat")):
        for split in ("train", "val"):
            names = [f"{split}/{i:04d}.webp" for i in range(2)]
            for name in names:
                _save_image(os.path.join(root, "lsun", folder, name), rng)
            _write_list(os.path.join(root, "lsun", f"{stem}_{split}.txt"), names)


def make_faces(root: str, rng) -> None:
    for split in ("train", "validation"):
        names = [f"{split}_{i:05d}.png" for i in range(2)]
        for name in names:
            _save_image(os.path.join(root, "ffhq", name), rng)
        _write_list(os.path.join(root, f"ffhq{split}.txt"), names)
        arrays = [f"{split}_{i:05d}.npy" for i in range(2)]
        os.makedirs(os.path.join(root, "celebahq"), exist_ok=True)
        for name in arrays:  # the original's layout: 1 x 3 x H x W uint8
            np.save(os.path.join(root, "celebahq", name),
                    rng.integers(0, 256, (1, 3) + FAKE_IMAGE_SIZE, dtype=np.uint8))
        _write_list(os.path.join(root, f"celebahq{split}.txt"), arrays)


def make_openimages(root: str, rng) -> None:
    for split in ("train", "validation"):
        for i in range(2):
            _save_image(os.path.join(root, "openimages", split, f"{i:016x}.jpg"), rng)


def make_captioned_folder(folder: str, rng) -> None:
    for i in range(2):
        _save_image(os.path.join(folder, f"{i}.png"), rng)
        _write_list(os.path.join(folder, f"{i}.txt"), ["a red circle"])


def make_shard(path: str, rng, count: int = 2) -> str:
    """A webdataset shard of ``count`` samples: <key>.jpg, <key>.txt, <key>.json."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            image = os.path.join(os.path.dirname(path), f"{i:06d}.jpg")
            _save_image(image, rng)
            text, meta = os.path.join(os.path.dirname(path), f"{i:06d}.txt"), image[:-4] + ".json"
            _write_list(text, ["a red circle"])
            with open(meta, "w") as handle:
                json.dump({"original_width": 1024, "original_height": 1024, "pwatermark": 0.0}, handle)
            for member in (image, text, meta):
                tar.add(member, arcname=os.path.basename(member))
    return path


# Dataset classes (after the alias table) -> the maker of their fake data under the data root.
FAKE_DATA: Dict[str, Callable] = {
    "ldm.data.imagenet.": make_imagenet,
    "ldm.data.lsun.": make_lsun,
    "ldm.data.faceshq.": make_faces,
    "ldm.data.openimages.": make_openimages,
    "ldm.data.shapes.": None,  # procedural
}


def _maker(target: str):
    target = resolve_target_alias(target)
    for prefix, maker in FAKE_DATA.items():
        if target.startswith(prefix):
            return maker
    if target == "ldm.data.image_folder.CaptionedImageFolder":
        return make_captioned_folder
    raise AssertionError(f"no fake data maker for {target}: add one to FAKE_DATA in this test")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Every layout's fake data under one data root (cheap: a few small images each)."""
    root = str(tmp_path_factory.mktemp("data"))
    rng = np.random.default_rng(0)
    for maker in (make_imagenet, make_lsun, make_faces, make_openimages):
        maker(root, rng)
    return root


# ---------------------------------------------------------------- shrinking big models

def _select(config, key, default=None):
    return OmegaConf.select(config, key, default=default)


def _downsampling(ddconfig) -> int:
    return 2 ** (len(ddconfig.ch_mult) - 1)


def _shrink_autoencoder(prefix: str, params, resolution: int) -> List[str]:
    """A (first-stage) autoencoder at 32 channels, one residual block per level, no attention;
    the same number of levels, so the same downsampling factor."""
    levels = len(params.ddconfig.ch_mult)
    return [f"{prefix}.ddconfig.ch=32", f"{prefix}.ddconfig.ch_mult=[{','.join(['1'] * levels)}]",
            f"{prefix}.ddconfig.num_res_blocks=1", f"{prefix}.ddconfig.attn_resolutions=[]",
            f"{prefix}.ddconfig.resolution={resolution}"]


def _shrink_unet(prefix: str, params, latent_size: int) -> List[str]:
    overrides = [f"{prefix}.model_channels=32", f"{prefix}.channel_mult=[1,2]", f"{prefix}.num_res_blocks=1",
                 f"{prefix}.attention_resolutions=[2]", f"{prefix}.image_size={latent_size}"]
    if _select(params, "num_head_channels", -1) not in (-1, None):
        overrides.append(f"{prefix}.num_head_channels=32")
    if "transformer_depth" in params:
        overrides.append(f"{prefix}.transformer_depth=1")
    return overrides


def _shrink_cond_stage(config) -> List[str]:
    target = _select(config, "model.params.cond_stage_config.target", "")
    if str(target).endswith("FrozenOpenCLIPEmbedder"):
        return ["model.params.cond_stage_config.params.arch=ViT-B-32",
                "model.params.unet_config.params.context_dim=512"]
    return []


def _length_overrides(config) -> List[str]:
    """Procedural datasets of millions of examples cut to 8 (shuffling 10^7 indices takes a second),
    and validation every 8 steps where the config counts in steps."""
    overrides = [f"data.params.{split}.params.length=8" for split in ("train", "validation", "test")
                 if _select(config, f"data.params.{split}.params.length", 0) > 8]
    interval = _select(config, "lightning.trainer.val_check_interval")
    if overrides and isinstance(interval, int) and interval > 8:
        overrides.append("lightning.trainer.val_check_interval=8")
    return overrides


def _data_size_overrides(config, image_size: int) -> List[str]:
    """The image size of every file-based dataset of the config (the shapes world keeps its own)."""
    overrides = []
    for split in ("train", "validation", "test"):
        dataset = _select(config, f"data.params.{split}")
        if dataset is None or "target" not in dataset:
            continue
        target = resolve_target_alias(dataset.target)
        if target.startswith("ldm.data.shapes."):
            continue
        key = "config.size" if target.startswith(("ldm.data.imagenet.ImageNetTrain",
                                                  "ldm.data.imagenet.ImageNetValidation")) else "size"
        overrides.append(f"data.params.{split}.params.{key}={image_size}")
    return overrides


def shrink_overrides(config) -> List[str]:
    """``key=value`` overrides that make the config's model small and its images match."""
    model = config.model.params
    overrides: List[str] = _length_overrides(config)
    if "unet_config" in model and _select(model, "unet_config.params.model_channels") > SMALL_WIDTH:
        first = _select(model, "first_stage_config.params")
        ckpt = _select(model, "first_stage_config.params.ckpt_path")
        keeps_first_stage = first is None or (ckpt and os.path.isfile(in_cwd_or_repository(ckpt)))
        factor = 1 if first is None else _downsampling(first.ddconfig)
        overrides += _shrink_unet("model.params.unet_config.params", model.unet_config.params, LATENT_SIZE)
        overrides.append(f"model.params.image_size={LATENT_SIZE}")
        if "ckpt_path" in model:  # its UNet no longer fits
            overrides.append("model.params.ckpt_path=null")
        if not keeps_first_stage:
            overrides += _shrink_autoencoder("model.params.first_stage_config.params", first, LATENT_SIZE * factor)
        overrides += _shrink_cond_stage(config) + _data_size_overrides(config, LATENT_SIZE * factor)
    elif "ddconfig" in model and model.ddconfig.ch > SMALL_WIDTH:
        image_size = max(32, 2 * _downsampling(model.ddconfig))  # the PatchGAN needs 32 pixels
        overrides += _shrink_autoencoder("model.params", model, image_size) + _data_size_overrides(config, image_size)
    return overrides


# ---------------------------------------------------------------- the walk

def _common_args(tmp_path) -> List[str]:
    return ["-t", "-l", str(tmp_path / "logs"), "--accelerator", "cpu", "--max_steps", "2",
            "data.params.batch_size=1", "data.params.num_workers=0",
            "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
            "lightning.trainer.num_sanity_val_steps=1", "lightning.trainer.limit_val_batches=1",
            "lightning.callbacks.image_logger.params.disabled=true"]


def _webdataset_installed() -> bool:
    try:
        import webdataset  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("config_path", training_configs())
def test_original_config_trains_two_steps_or_names_the_data_it_needs(config_path, data_root, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("LDM_DATA_ROOT", data_root)
    monkeypatch.delenv("LDM_LPIPS_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    config = OmegaConf.load(os.path.join(REPO, config_path))
    bases = [os.path.join(REPO, config_path)]
    if "model" not in config:
        bases.insert(0, OVERLAY_BASE)
        config = OmegaConf.merge(OmegaConf.load(OVERLAY_BASE), config)
    args = ["--base", *bases] + _common_args(tmp_path) + shrink_overrides(config)

    if resolve_target_alias(config.data.target) == WEBDATASET_MODULE:
        if not _webdataset_installed():
            assert main(args) == 2
            lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("main.py")]
            assert len(lines) == 1 and re.fullmatch(
                r"main.py: error: ldm.data.laion.WebDataModuleFromConfig needs the webdataset package \(pip install "
                r"webdataset\) and webdataset shards: \.tar files of .*", lines[0]), lines
            return
        make_shard(str(tmp_path / "shards" / "000000.tar"), np.random.default_rng(0))
        args += [f"data.params.tar_base={tmp_path / 'shards'}", "data.params.train.shards=[000000.tar]",
                 "data.params.validation.shards=[000000.tar]", "data.params.min_size=null",
                 "data.params.multinode=false"]
    for split in ("train", "validation", "test"):
        dataset = _select(config, f"data.params.{split}")
        if dataset is not None and "target" in dataset and _maker(dataset.target) is make_captioned_folder:
            make_captioned_folder(str(tmp_path / dataset.params.root), np.random.default_rng(0))

    result = run(args)
    assert result.trainer.global_step == 2
    last = torch.load(os.path.join(result.paths.ckptdir, "last.ckpt"), map_location="cpu", weights_only=True)
    assert last["global_step"] == 2


def _reads_files(config_path: str) -> bool:
    """Whether the config's datasets read files under the data root (not the shapes world, not an
    image folder it names itself, not webdataset shards)."""
    config = OmegaConf.load(os.path.join(REPO, config_path))
    targets = [resolve_target_alias(_select(config, f"data.params.{split}.target", ""))
               for split in ("train", "validation")]
    return any(t.startswith(("ldm.data.imagenet.", "ldm.data.lsun.", "ldm.data.faceshq.", "ldm.data.openimages."))
               for t in targets)


@pytest.mark.parametrize("config_path", [path for path in training_configs() if _reads_files(path)])
def test_without_its_data_an_original_config_stops_with_one_line_naming_the_layout(config_path, tmp_path,
                                                                                    monkeypatch, capsys):
    monkeypatch.setenv("LDM_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    config = OmegaConf.load(os.path.join(REPO, config_path))
    args = ["--base", os.path.join(REPO, config_path)] + _common_args(tmp_path) + shrink_overrides(config)
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("main.py")]
    assert len(lines) == 1 and re.fullmatch(r"main.py: error: .* not found: expected .*\(LDM_DATA_ROOT is '.*no-data'"
                                            r".*; see docs/DATA.md\)", lines[0]), lines
    assert not os.path.exists(tmp_path / "logs") or os.listdir(tmp_path / "logs") == []


def test_the_walk_finds_the_original_training_configs():
    found = training_configs()
    for path in ("configs/latent-diffusion/cin-ldm-vq-f8.yaml", "configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml",
                 "configs/latent-diffusion/ffhq-ldm-vq-4.yaml", "configs/autoencoder/autoencoder_kl_32x32x4.yaml",
                 "configs/stable-diffusion/v2-inpainting-inference.yaml", "configs/examples/image-folder.yaml"):
        assert path in found
    assert "configs/stable-diffusion/v1-inference.yaml" not in found  # no data: section
