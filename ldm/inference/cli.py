"""Flags shared by the scripts, in groups each script adds with its own defaults, and the
wrapper that turns every error a user can cause into one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference.errors import RunInterrupted, UsageError
from ldm.inference.guidance import (
    DEFAULT_GUIDE_COLOR_SPACE,
    DEFAULT_GUIDE_REGION,
    GUIDE_COLOR_SPACES,
    GUIDE_REGIONS,
    KEEP_LAYOUT_GUIDE_SCALE,
)
from ldm.models.diffusion.samplers import describe_samplers
from ldm.models.diffusion.sampling_util import NonFiniteSampleError
from ldm.modules.diffusionmodules.util import StepCountError
from ldm.util import CheckpointError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def add_prompt_args(parser: argparse.ArgumentParser, prompt: str, shapes_prompt: str) -> None:
    group = parser.add_argument_group("prompts")
    default = (f"{shapes_prompt!r} with the shipped shapes model, else {prompt!r}, the original script's"
               if shapes_prompt != prompt else repr(prompt))
    group.add_argument("--prompt", type=str, nargs="?", default=None,
                       help=f"the prompt to render (default: {default})")
    group.add_argument("--negative_prompt", "--negative-prompt", type=str, default="",
                       help="what the image should not show; used as the unconditional prompt of "
                            "classifier-free guidance (default: empty)")
    group.add_argument("--from-file", type=str, default=None,
                       help="read prompts from this file, one per line (blank lines are skipped); "
                            "overrides --prompt")
    group.add_argument("--repeat", type=int, default=1,
                       help="with --from-file, repeat each prompt this many times (default: 1)")


def add_output_args(parser: argparse.ArgumentParser, outdir: str) -> None:
    group = parser.add_argument_group("outputs")
    group.add_argument("--outdir", type=str, nargs="?", default=outdir,
                       help="folder for samples/NNNNN.png and grid-NNNN.png; existing files are "
                            "never overwritten (default: %(default)s)")
    group.add_argument("--skip_grid", action="store_true",
                       help="do not save a grid of all images")
    group.add_argument("--skip_save", action="store_true",
                       help="do not save individual images (only the grid)")
    group.add_argument("--n_rows", type=int, default=0,
                       help="images per grid row (default: 0 = --n_samples)")


def add_sampling_args(parser: argparse.ArgumentParser, steps: int, scale: float, n_iter: int,
                      n_samples: int, sampler_choice: bool = True) -> None:
    """Sampler, steps, guidance, seed and batch flags. ``sampler_choice=False`` for scripts that
    need DDIM's partial denoising (img2img, depth2img)."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--steps", "--ddim_steps", dest="steps", type=int, default=steps,
                       help="number of sampling steps (default: %(default)s)")
    if sampler_choice:
        add_sampler_choice(parser, group)
    group.add_argument("--ddim_eta", type=float, default=0.0,
                       help="DDIM eta: 0 is deterministic DDIM, 1 is as stochastic as DDPM "
                            "(default: %(default)s)")
    group.add_argument("--scale", type=float, default=scale,
                       help="classifier-free guidance scale: eps = eps(uncond) + scale * "
                            "(eps(cond) - eps(uncond)); 1 turns guidance off (default: %(default)s)")
    group.add_argument("--seed", type=int, default=42,
                       help="seed of the first image; image i uses seed + i, whatever the batch "
                            "size, so each image can be regenerated alone (default: %(default)s)")
    group.add_argument("--fixed_code", action="store_true",
                       help="reuse the same noise for every iteration (image j of every batch gets "
                            "seed + j)")
    group.add_argument("--n_iter", type=int, default=n_iter,
                       help="how many times to sample each batch (default: %(default)s)")
    group.add_argument("--n_samples", type=int, default=n_samples,
                       help="images per batch, i.e. the batch size (default: %(default)s)")


def add_sampler_choice(parser: argparse.ArgumentParser, group: argparse._ArgumentGroup) -> None:
    """``--sampler NAME`` and the originals' ``--plms`` / ``--dpm`` switches, with the samplers
    listed after the flags."""
    group.add_argument("--sampler", type=str, default=None, metavar="NAME",
                       help="sampler by name (default: ddim); the names are listed below")
    group.add_argument("--plms", action="store_true", help="use the PLMS sampler (= --sampler plms)")
    group.add_argument("--dpm", "--dpm_solver", dest="dpm", action="store_true",
                       help="use DPM-Solver++ (multistep, order 2) as the originals (= --sampler dpm)")
    _list_samplers(parser)


def _list_samplers(parser: argparse.ArgumentParser) -> None:
    """Name every sampler of the registry after the flags, one per line."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "samplers (--sampler NAME):\n" + "\n".join(
        f"  {line}" for line in describe_samplers().splitlines())


def add_guidance_args(parser: argparse.ArgumentParser, default_scale: float, default_clip_scale: float) -> None:
    group = parser.add_argument_group(
        "loss guidance",
        "steer sampling with the gradient of a loss on the decoded predicted image (README: Loss guidance)")
    group.add_argument("--guide-color", type=str, default=None, metavar="R,G,B",
                       help="pull the image toward this colour (0-255 each, e.g. 40,85,220): the mean squared "
                            "distance of its pixels to the colour, through the decoder (default: off)")
    group.add_argument("--guide-scale", type=float, default=None,
                       help=f"strength of --guide-color; 0 changes nothing (default: {default_scale:g}; "
                            f"{KEEP_LAYOUT_GUIDE_SCALE:g} with --guide-keep-layout)")
    group.add_argument("--guide-region", choices=GUIDE_REGIONS, default=DEFAULT_GUIDE_REGION,
                       help="where --guide-color pulls: 'object' weights each pixel by its saturation (the "
                            "coloured object, not a grey background), 'image' every pixel alike, as the "
                            "diffusers tutorial's colour loss (default: %(default)s)")
    group.add_argument("--guide-color-space", choices=GUIDE_COLOR_SPACES, default=DEFAULT_GUIDE_COLOR_SPACE,
                       help="what --guide-color compares: 'rgb' the squared channel differences (the tutorial), "
                            "'hue' only the hue angle, leaving brightness and saturation alone; 'latent' pulls the "
                            "predicted latent along the first stage's own colour direction, no decoder in the "
                            "gradient (recolours the object in place; try --guide-scale 100 --guide-region object) "
                            "(default: %(default)s)")
    group.add_argument("--guide-keep-layout", action="store_true",
                       help="with --guide-color-space latent, in txt2img: sample each image first without "
                            "guidance, recolour its object in that latent, and pull the guided sample toward it, "
                            "so the object keeps its place and shape (twice the time; "
                            "assumes one coloured object on a less colourful background, as the shapes world)")
    group.add_argument("--guide-max-step", type=float, default=None, metavar="X",
                       help="cap the loss guidance's change of the noise prediction at this root-mean-square per "
                            "image and step (per-step gradient clipping; default: no cap)")
    group.add_argument("--guide-clip", type=str, default=None, metavar="TEXT",
                       help="pull the image toward this text as CLIP sees it: the spherical distance of their "
                            "CLIP embeddings, through CLIP and the decoder (default: off; needs --guide-clip-model)")
    group.add_argument("--guide-clip-model", type=str, default=None, metavar="DIR",
                       help="the CLIP model of --guide-clip: a local transformers CLIPModel directory "
                            "(save_pretrained); nothing is downloaded")
    group.add_argument("--guide-clip-scale", type=float, default=default_clip_scale,
                       help="strength of --guide-clip; 0 changes nothing (default: %(default)s)")


def add_size_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image size")
    group.add_argument("--H", type=int, default=None,
                       help="image height in pixels, a multiple of 8 (default: the size the "
                            "config's model was trained at, e.g. 512, or 768 for SD 2.x v-models)")
    group.add_argument("--W", type=int, default=None,
                       help="image width in pixels, a multiple of 8 (default: as --H)")
    group.add_argument("--C", type=int, default=None,
                       help="latent channels (default: the config's, 4 for Stable Diffusion)")
    group.add_argument("--f", type=int, default=None,
                       help="downsampling factor of the autoencoder (default: the config's, 8 for "
                            "Stable Diffusion)")


def add_model_args(parser: argparse.ArgumentParser, config: str, ckpt: str) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--config", type=str, default=None,
                       help=f"model config YAML (default: {config}, or the config that fits --ckpt)")
    group.add_argument("--ckpt", type=str, default=None,
                       help=f"checkpoint (.ckpt or .safetensors) that fits --config (default: {ckpt})")
    group.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                       help="--ema loads the checkpoint's EMA weights into the UNet, --no-ema its "
                            "plain weights (default: as the config says, use_ema)")
    add_device_arg(group)


def add_device_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--device", type=str, default="auto",
                       help="auto, cpu, cuda, cuda:N or mps (default: auto = CUDA, then MPS, "
                            "then CPU)")


def add_adapter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA, embeddings and VAE", "put on the model after it is loaded (docs/LORA.md)")
    group.add_argument("--lora", action="append", default=None, metavar="FILE[:WEIGHT]",
                       help="apply a LoRA file (.safetensors, kohya-ss or diffusers/PEFT format) to the UNet and "
                            "text encoder at WEIGHT (default: 1; 0 is the model without it); repeat for several")
    group.add_argument("--embedding", action="append", default=None, metavar="FILE[:TOKEN]",
                       help="load a textual-inversion embedding (A1111 .pt, .safetensors, diffusers "
                            "learned_embeds) into the CLIP text encoder; TOKEN in a prompt stands for its "
                            "vectors (default: the file's token, else its name without extension); repeat "
                            "for several")
    group.add_argument("--vae", type=str, default=None, metavar="FILE",
                       help="replace the model's autoencoder weights with those of FILE (a VAE .safetensors/.ckpt "
                            "such as vae-ft-mse-840000-ema-pruned, or a checkpoint holding first_stage_model.*) "
                            "(default: the checkpoint's own)")


def add_performance_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("precision, memory and speed")
    group.add_argument("--precision", type=str, choices=["full", "autocast"], default="autocast",
                       help="autocast: fp16 on CUDA/MPS (bf16 with --bf16), bf16 on a CPU with native "
                            "bfloat16 (AMX/AVX512-BF16; LDM_CPU_BF16=0/1 overrides; the UNet and text encoder "
                            "weights then held in bf16), else fp32; "
                            "full: fp32 everywhere (default: %(default)s)")
    group.add_argument("--bf16", action="store_true",
                       help="autocast in bfloat16 instead of float16 (also on CPU)")
    group.add_argument("--cache-interval", type=int, default=None, metavar="N",
                       help="DeepCache (Ma et al. 2023): run the whole UNet every N steps and only its "
                            "shallow blocks in between, reusing the deep features (the UNet about 2.4x "
                            "faster at N=3 on SD 1.x; slightly different images; 1 is the same as off; "
                            "default: off)")
    group.add_argument("--cache-depth", type=int, default=1, metavar="D",
                       help="with --cache-interval: the shallow branch recomputed between full steps is the "
                            "first D+1 input and last D+1 output blocks of the UNet; 1 is DeepCache's branch 0 "
                            "for Stable Diffusion, 0 recomputes only the input convolution's skip (faster, "
                            "further from the full UNet) (default: %(default)s)")
    group.add_argument("--token-merging", type=float, default=None, metavar="RATIO",
                       help="token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023): merge this fraction "
                            "of the most similar tokens before each self-attention at the latent's full "
                            "resolution (0.5 is the paper's setting; slightly different images; 0 is the same as "
                            "off; default: off)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet (slow first batch, faster afterwards)")
    group.add_argument("--attention-slicing", type=int, nargs="?", const=1024, default=None,
                       metavar="ROWS",
                       help="compute attention ROWS query positions at a time (default when given "
                            "without a value: 1024) to save memory on large images; same results")
    group.add_argument("--vae-tiling", action="store_true",
                       help="encode/decode with the autoencoder in tiles to save memory on "
                            "large images")


def check_positive(opt: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(opt, name)
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")


def run_script(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], object],
               argv: Optional[Sequence[str]] = None) -> None:
    """Parse flags and run ``main``; a usage error, an unusable checkpoint, a missing device or
    running out of memory ends with ``<prog>: error: <one line>`` and exit code 2."""
    opt = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(parser.prog)
            main(opt)
    except RunInterrupted as stop:
        _stop(f"interrupted: {stop}")
    except KeyboardInterrupt:
        _stop("interrupted: 0 image(s) saved")
    except (UsageError, CheckpointError, StepCountError, NonFiniteSampleError, RuntimeError) as err:
        message = user_error_message(err)
        if message is None:
            raise
        _fail(parser, message)


def user_error_message(err: BaseException) -> Optional[str]:
    """The one line that tells the user what went wrong, for the errors a user can cause (a bad
    option or input, an unusable checkpoint, a missing device, too little memory); None for a bug,
    which should surface as it is. The scripts print it, the web UI shows it in the page."""
    if isinstance(err, (UsageError, CheckpointError, StepCountError, NonFiniteSampleError)):
        return " ".join(str(err).split())
    if isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and _is_out_of_memory(err)):
        return out_of_memory_message()
    return None


def out_of_memory_message() -> str:
    return ("out of memory: try --n_samples 1, --attention-slicing and --vae-tiling, a smaller "
            "--H/--W, or --precision autocast on a GPU")


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _one_line_warning(prog: str) -> Callable[..., None]:
    """Warnings as the scripts' errors look: ``<prog>: warning: <message>`` on one line of stderr."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        tqdm.write(f"{prog}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
    return show


def _stop(message: str) -> None:
    """End an interrupted run as shells expect after Ctrl-C: one line, exit code 130."""
    print(message, file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
