"""Loading an SD 1.5-size checkpoint: ours (``ldm.load``) against diffusers'
``StableDiffusionPipeline.from_single_file`` on the same file.

Measured per file and side in a fresh subprocess (so imports, page faults and allocator state are
not shared): the wall-clock time from the parent starting the command to the start of the first
UNet call of a one-step text-to-image run (256 px, classifier-free guidance as by default), and
the peak resident set size of the process once that call is done (``VmHWM`` from
``/proc/self/status``; a lazily loaded UNet has then been read too), next to the size of the
loaded weights in memory.

The checkpoints hold random weights of the SD 1.5 layout (the keys and shapes of
``configs/stable-diffusion/v1-inference.yaml``'s model; schedule buffers as computed): float32
and float16 safetensors and a float32 ``.ckpt`` (``{"state_dict": ...}``, as the original
releases). ``--make`` writes them, and the diffusers configuration folder that
``from_single_file`` needs offline (``config=``: the UNet, VAE, scheduler, CLIP text model and
tokenizer configs of SD 1.5, made here from the same sources, no download):

    python benchmarks/load_checkpoint.py --make /tmp/sd15-random     # once: about 11 GB of files
    OMP_NUM_THREADS=1 python benchmarks/load_checkpoint.py --dir /tmp/sd15-random [--runs 3]

Each side loads as by default on the CPU: diffusers in float32; ours at ``precision="autocast"``,
which on a CPU with native bfloat16 is bf16 autocast with the UNet's and text encoder's linear and
convolution weights stored in bf16 (cast once from the file), else float32 (``LDM_CPU_BF16=0``
forces float32). The precision ours used is printed; "weights" is the loaded model's tensors in
memory, "fp32 weights" the same tensors counted at 4 bytes per float, the figure the float32 rows
and diffusers have. The files are read once before the runs, so both find them in the page cache.
Needs diffusers (``pip install -e ".[bench]"``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SD1_CONFIG = REPO_ROOT / "configs/stable-diffusion/v1-inference.yaml"
FILES = ("sd15-random-fp32.safetensors", "sd15-random-fp16.safetensors", "sd15-random-fp32.ckpt")
DIFFUSERS_CONFIG = "diffusers-config"
PROMPT = "a red circle"
SIDE = 256  # image side of the one step: every weight is read as at 512, the step is 4x shorter
GIB = 1024 ** 3


# ---------------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------------
def make_files(folder: Path) -> None:
    """Random SD 1.5-size checkpoints in three forms, and diffusers' offline config folder."""
    import torch
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config, save_checkpoint
    from ldm.util.model_loading import parameters_on_meta

    folder.mkdir(parents=True, exist_ok=True)
    with parameters_on_meta():
        skeleton = instantiate_from_config(OmegaConf.load(SD1_CONFIG).model)
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for key, tensor in skeleton.state_dict().items():
        if tensor.is_meta:  # a parameter: small random values (zero-initialised layers too)
            tensor = torch.randn(tensor.shape, generator=generator).mul_(0.02)
        weights[key] = tensor
    save_checkpoint(weights, str(folder / FILES[0]))
    save_checkpoint(weights, str(folder / FILES[2]))
    save_checkpoint({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
                    str(folder / FILES[1]))
    del weights
    make_diffusers_config(folder / DIFFUSERS_CONFIG, skeleton)


def make_diffusers_config(folder: Path, skeleton) -> None:
    """The diffusers-format folder of SD 1.5's configs (``model_index.json`` and one config per
    component, no weights), built from v1-inference.yaml with diffusers' own converters, our
    CLIPTextConfig of openai/clip-vit-large-patch14 and our CLIP tokenizer."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from omegaconf import OmegaConf
    from transformers import CLIPTextModel

    from ldm.modules.encoders.clip_text import text_config
    from ldm.modules.encoders.tokenizer import build_clip_tokenizer
    from ldm.util.model_loading import parameters_on_meta

    original = OmegaConf.to_container(OmegaConf.load(SD1_CONFIG), resolve=True)
    shapes = skeleton.state_dict()
    with parameters_on_meta():
        unet = UNet2DConditionModel(**create_unet_diffusers_config_from_ldm(original, shapes, image_size=512))
        vae = AutoencoderKL(**create_vae_diffusers_config_from_ldm(original, shapes, image_size=512))
        text_encoder = CLIPTextModel(text_config("openai/clip-vit-large-patch14"))
    params = original["model"]["params"]
    scheduler = PNDMScheduler(beta_start=params["linear_start"], beta_end=params["linear_end"],
                              beta_schedule="scaled_linear", num_train_timesteps=params["timesteps"],
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(str(folder))
    for name in ("unet", "vae", "scheduler"):
        getattr(pipe, name).save_config(str(folder / name))
    text_encoder.config.save_pretrained(str(folder / "text_encoder"))
    pipe.tokenizer.save_pretrained(str(folder / "tokenizer"))


# ---------------------------------------------------------------------------------------------
# One measurement (in a subprocess)
# ---------------------------------------------------------------------------------------------
class FirstStep(Exception):
    """Raised after the first UNet call: what was to be measured is over."""


def _until_first_step(unet_class, generate: Callable[[], object]) -> Dict[str, float]:
    """Run ``generate`` up to the end of its first call of ``unet_class``: the times that call
    begins and ends, and the peak RSS once it is done (all weights of the UNet have then been
    read, whether or not the loader touched them before)."""
    forward = unet_class.forward
    times: Dict[str, float] = {}

    def first_call(self, *args, **kwargs):
        times["at"] = time.time()
        forward(self, *args, **kwargs)
        times["done"] = time.time()
        times["peak"] = _peak_rss_bytes()
        raise FirstStep()
    unet_class.forward = first_call
    try:
        generate()
    except FirstStep:
        pass
    return times


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _weights_bytes(*modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())


def _fp32_weights_bytes(*modules) -> int:
    """The same tensors with every float counted at 4 bytes (float32)."""
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
               for m in modules for t in m.state_dict().values())


def _dtype_name(dtype) -> str:
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def run_ours(ckpt: str) -> Dict[str, float]:
    import ldm
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    pipe = ldm.load("txt2img", ckpt=ckpt, config=str(SD1_CONFIG), device="cpu")
    times = _until_first_step(UNetModel, lambda: pipe(PROMPT, steps=1, n=1, H=SIDE, W=SIDE))
    precision = _dtype_name(pipe.dtype) + (" autocast" if pipe.dtype is not None else "")
    if pipe.weights_dtype is not None:
        precision += f", {_dtype_name(pipe.weights_dtype)} weights"
    return {**times, "weights": _weights_bytes(pipe.model), "fp32_weights": _fp32_weights_bytes(pipe.model),
            "precision": precision}


def run_diffusers(ckpt: str) -> Dict[str, float]:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    config = str(Path(ckpt).parent / DIFFUSERS_CONFIG)
    pipe = StableDiffusionPipeline.from_single_file(ckpt, config=config, local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    times = _until_first_step(UNet2DConditionModel, lambda: pipe(PROMPT, num_inference_steps=1,
                                                                 num_images_per_prompt=1, height=SIDE, width=SIDE))
    parts = (pipe.unet, pipe.vae, pipe.text_encoder)
    return {**times, "weights": _weights_bytes(*parts), "fp32_weights": _fp32_weights_bytes(*parts),
            "precision": _dtype_name(pipe.unet.dtype)}


def measure(side: str, ckpt: str) -> Dict[str, float]:
    """One fresh process: seconds from its start to the first denoising step, its peak RSS."""
    start = time.time()
    done = subprocess.run([sys.executable, __file__, "--child", side, ckpt], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} on {ckpt} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": result["at"] - start, "done": result["done"] - start, "peak": result["peak"],
            "weights": result["weights"],
            "fp32_weights": result["fp32_weights"], "precision": result["precision"]}


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------
def read_into_page_cache(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def compare(folder: Path, runs: int) -> None:
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {runs} run(s) per side, medians")
    print(f"{'file':32s} {'side':9s} {'first step s':>12s} {'step done s':>11s} {'peak RSS GiB':>12s} "
          f"{'weights GiB':>11s} {'peak/weights':>12s} {'fp32 weights GiB':>16s} {'peak/fp32 weights':>17s}  precision")
    for name in FILES:
        path = folder / name
        read_into_page_cache(path)
        results: Dict[str, List[Dict[str, float]]] = {"ours": [], "diffusers": []}
        for _ in range(runs):
            for side in results:  # alternated, so a slower moment of the machine hits both
                results[side].append(measure(side, str(path)))
        medians = {side: {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "precision"}
                   for side, rows in results.items()}
        for side, m in medians.items():
            print(f"{name:32s} {side:9s} {m['seconds']:12.2f} {m['done']:11.2f} {m['peak'] / GIB:12.2f} "
                  f"{m['weights'] / GIB:11.2f} {m['peak'] / m['weights']:12.2f} {m['fp32_weights'] / GIB:16.2f} "
                  f"{m['peak'] / m['fp32_weights']:17.2f}  {results[side][0]['precision']}")
        ours, theirs = medians["ours"], medians["diffusers"]
        print(f"{name:32s} {'ratio':9s} {ours['seconds'] / theirs['seconds']:12.2f} "
              f"{ours['done'] / theirs['done']:11.2f} {ours['peak'] / theirs['peak']:12.2f}   (ours / diffusers)")
        if runs > 1:
            print(f"{name:32s} {'runs':9s} first step s, in order: " + "; ".join(
                f"{side} " + " ".join(f"{r['seconds']:.2f}" for r in rows) for side, rows in results.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make", type=Path, help="write the random checkpoints and diffusers' config folder here")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sd15-random"), help="where --make wrote them")
    parser.add_argument("--runs", type=int, default=1, help="measurements per file and side (the median is shown)")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, ckpt = args.child
        result = (run_ours if side == "ours" else run_diffusers)(ckpt)
        print(json.dumps(result), flush=True)
        os._exit(0)  # the measurement is over: skip tearing down gigabytes of tensors
    if args.make:
        make_files(args.make)
        return
    missing = [name for name in FILES if not (args.dir / name).is_file()]
    if missing:
        raise SystemExit(f"{args.dir} lacks {', '.join(missing)}: run with --make {args.dir} first")
    compare(args.dir, args.runs)


if __name__ == "__main__":
    main()
