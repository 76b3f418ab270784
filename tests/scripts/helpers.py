"""Helpers of the script tests: tiny random-weight models saved as config + checkpoint, running a
script in a subprocess or in-process, and reading what it wrote.

The text encoder is transformers' CLIP text model at toy size (width 32, one layer) with the
shipped CLIP tokenizer, saved to a local folder that the config names as ``version`` (no network).
Autoencoder f = 2, UNet with two levels: images need sides that are multiples of 4; 32x32 images
have 16x16 latents. Layers that start at zero are perturbed so that prompts change the images.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldm.util import instantiate_from_config, save_checkpoint
from tests.tiny_configs import (
    TINY_MIDAS,
    TINY_UNCLIP_EMBEDDING,
    tiny_ddpm_config,
    tiny_latent_diffusion_config,
    tiny_unclip_config,
    tiny_unet_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_TEXT_WIDTH = 32


@dataclass
class TinyModel:
    config: Path
    ckpt: Path

    def flags(self) -> List[str]:
        return ["--config", str(self.config), "--ckpt", str(self.ckpt)]

    def load(self, task: str = "txt2img", **keywords):
        """``ldm.load(task)`` of this model on the CPU, with ``keywords`` (``vae=``, ``lora=``, ...)."""
        import ldm

        return ldm.load(task, ckpt=str(self.ckpt), config=str(self.config), device="cpu", **keywords)


def _save_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.modules.encoders.tokenizer import build_clip_tokenizer

    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_size=TINY_TEXT_WIDTH,
                            intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            projection_dim=TINY_TEXT_WIDTH, hidden_act="quick_gelu",
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    build_clip_tokenizer(77).save_pretrained(folder / "tokenizer")
    return folder


def _text_stage(clip_dir: Path) -> Dict:
    return {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder", "params": {"version": str(clip_dir)}}


def _task_config(target: str, unet_in_channels: int, clip_dir: Path, **params) -> DictConfig:
    unet_overrides = params.pop("unet", {})
    config = tiny_latent_diffusion_config(
        unet_config=tiny_unet_config(in_channels=unet_in_channels, **unet_overrides),
        cond_stage_config=_text_stage(clip_dir), **params)
    config.target = target
    return config


def _save_model(folder: Path, name: str, model_config, seed: int) -> TinyModel:
    torch.manual_seed(seed)
    model = instantiate_from_config(model_config)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    config_path = folder / f"{name}.yaml"
    OmegaConf.save(OmegaConf.create({"model": model_config}), config_path)
    ckpt_path = folder / f"{name}.ckpt"
    save_checkpoint(model.state_dict(), str(ckpt_path), metadata={"global_step": 1})
    return TinyModel(config=config_path, ckpt=ckpt_path)


def build_tiny_models(folder: Path) -> Dict[str, TinyModel]:
    """Config + checkpoint of a tiny text-to-image, inpainting (9 channels), depth (5 channels)
    and upscaling (7 channels + noise level) model, saved under ``folder``."""
    clip_dir = _save_tiny_clip(folder / "clip")
    configs = {
        "txt2img": tiny_latent_diffusion_config(cond_stage_config=_text_stage(clip_dir)),
        "inpaint": _task_config("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", 9, clip_dir,
                                conditioning_key="hybrid", finetune_keys=None),
        "depth": _task_config("ldm.models.diffusion.ddpm.LatentDepth2ImageDiffusion", 5, clip_dir,
                              conditioning_key="hybrid", finetune_keys=None,
                              depth_stage_config=TINY_MIDAS),
        "upscale": _task_config("ldm.models.diffusion.ddpm.LatentUpscaleDiffusion", 7, clip_dir,
                                conditioning_key="hybrid-adm", low_scale_key="lr",
                                unet={"num_classes": 1000},
                                low_scale_config={
                                    "target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
                                    "params": {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02},
                                               "max_noise_level": 350}}),
    }
    return {name: _save_model(folder, name, config, seed) for seed, (name, config) in enumerate(configs.items())}


TINY_UNCLIP_H_EMBEDDING = 2 * TINY_UNCLIP_EMBEDDING  # wider than L's, as ViT-H's 1024 is than ViT-L's 768


def build_tiny_unclip_models(folder: Path) -> Dict[str, TinyModel]:
    """Config + checkpoint of the unCLIP-L and -H inference configs at toy size (``tiny_unclip_config``);
    unCLIP-L's noise augmentation reads random CLIP statistics saved beside them (``stats.th``), and
    unCLIP-H's image embedding is twice as wide as L's (as for the real models, the Karlo prior fits L only)."""
    generator = torch.Generator().manual_seed(0)
    stats = (torch.randn(TINY_UNCLIP_EMBEDDING, generator=generator),
             torch.rand(TINY_UNCLIP_EMBEDDING, generator=generator) + 0.5)
    torch.save(stats, folder / "stats.th")
    width = TINY_UNCLIP_H_EMBEDDING
    configs = {"unclip-l": tiny_unclip_config("l", f"model.params.noise_aug_config.params.clip_stats_path={folder}/stats.th"),
               "unclip-h": tiny_unclip_config("h", f"model.params.embedder_config.params.arch_overrides.embed_dim={width}",
                                              f"model.params.noise_aug_config.params.timestep_dim={width}",
                                              f"model.params.unet_config.params.adm_in_channels={2 * width}")}
    return {name: _save_model(folder, name, config.model, seed) for seed, (name, config) in enumerate(configs.items())}


TINY_CLASSES = 5  # four classes and the "no class" label of classifier-free guidance


def build_tiny_sampling_models(folder: Path) -> Dict[str, TinyModel]:
    """Config + checkpoint of a tiny pixel-space DDPM (eps, 3 x 16 x 16), an unconditional latent
    model and a class-conditional one (ClassEmbedder, ``TINY_CLASSES`` classes, key class_label),
    saved under ``folder``."""
    no_context = tiny_unet_config(use_spatial_transformer=False, context_dim=None)
    class_stage = {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                   "params": {"embed_dim": 32, "n_classes": TINY_CLASSES, "key": "class_label"}}
    configs = {
        "ddpm": tiny_ddpm_config(),
        "unconditional_ldm": tiny_latent_diffusion_config(cond_stage_config="__is_unconditional__",
                                                          unet_config=no_context),
        "class": tiny_latent_diffusion_config(cond_stage_config=class_stage, cond_stage_key="class_label"),
    }
    return {name: _save_model(folder, name, config, seed) for seed, (name, config) in enumerate(configs.items())}


@dataclass
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str


def run_script(script: str, *args: str, cwd: Path = None, processes: int = 0) -> ScriptRun:
    """Run ``scripts/<script>`` with ``args`` in a fresh interpreter on the CPU (no GPU visible);
    with ``processes``, as that many processes that ``torchrun`` starts on this machine (gloo)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
                   p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes else []
    done = subprocess.run([sys.executable, *launcher, str(REPO_ROOT / "scripts" / script), *args],
                          cwd=cwd or REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    return ScriptRun(done.returncode, done.stdout, done.stderr)


def error_line(run: ScriptRun) -> str:
    """The last stderr line (where the one-line error is)."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def load_script(script: str):
    """Import ``scripts/<script>`` as a module (to build its parser or call ``main`` in-process)."""
    path = REPO_ROOT / "scripts" / script
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main_exit_code(script: str, argv: List[str]) -> int:
    """Call the script's ``main(argv)`` in this process, on the CPU unless ``argv`` names a
    device; its exit code (0 when it returns)."""
    try:
        load_script(script).main(["--device", "cpu", *argv])
    except SystemExit as stop:
        return stop.code
    return 0


def bad_input_failures(script: str, cases, output_flag: str, folder: Path, capsys) -> List[str]:
    """Run ``script`` in-process on each ``(argv, pattern)`` of ``cases`` with ``output_flag`` set to a
    fresh folder under ``folder``; what went wrong: an exit code other than 2, a last stderr line
    other than ``<script>: error: <matching pattern>``, or anything written."""
    import re

    failures = []
    for index, (argv, pattern) in enumerate(cases):
        out = folder / f"out{index}"
        code = main_exit_code(script, [*argv, output_flag, str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        message = lines[-1] if lines else ""
        if code != 2 or not message.startswith(f"{script}: error: ") or not re.search(pattern, message):
            failures.append(f"{argv[-2:]}: exit {code}, {message!r} (wanted {pattern!r})")
        if out.exists():
            failures.append(f"{argv[-2:]}: wrote {files_under(out)}")
    return failures


def pixel_array(images) -> np.ndarray:
    """PIL images as one int16 array [N, H, W, C]: compared exactly, or subtracted without wrapping."""
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def files_under(folder: Path) -> List[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


def png_parameters(path: Path) -> Dict[str, str]:
    from ldm.inference.images import read_parameters
    from ldm.inference.parameters import parse_parameters

    return parse_parameters(read_parameters(str(path)))


def write_test_image(path: Path, size=(32, 32), seed: int = 0, mode: str = "RGB") -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = (3,) if mode == "RGB" else ()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8), mode=mode).save(path)
    return path
