"""The command line of each task: its flags and defaults, those of the original scripts. The same
parsers give the Python API its defaults (``ldm.load(task)(prompt)`` with no keyword makes what
``python scripts/<task>.py --prompt ...`` makes), so the two cannot drift apart."""
from __future__ import annotations

import argparse
from typing import Callable, Dict

from ldm.inference import cli
from ldm.inference.loading import default_model_paths


def _txt2img() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txt2img.py", description="Make images from a text prompt.")
    cli.add_prompt_args(parser, prompt="a professional photograph of an astronaut riding a triceratops")
    cli.add_output_args(parser, outdir="outputs/txt2img-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=3, n_samples=3)
    cli.add_size_args(parser)
    return parser


def _img2img() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="img2img.py", description="Redraw an image following a text prompt.")
    cli.add_prompt_args(parser, prompt="a painting of a virus monster playing guitar")
    parser.add_argument("--init-img", type=str, nargs="?", default=None,
                        help="the image to start from; resized down to multiples of 64 (required)")
    parser.add_argument("--strength", type=float, default=0.8,
                        help="how much to change the image, in [0, 1]: 1 ignores it, 0 keeps it "
                             "(default: %(default)s)")
    cli.add_output_args(parser, outdir="outputs/img2img-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=1, n_samples=2, sampler_choice=False)
    return parser


def _inpaint() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaint.py", description="Repaint the masked part of an image.")
    cli.add_prompt_args(parser, prompt="")
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to inpaint; resized down to multiples of 64 (required)")
    parser.add_argument("--mask", type=str, default=None,
                        help="mask image of the same size, white where to repaint (binarised at "
                             "50%% grey) (required)")
    cli.add_output_args(parser, outdir="outputs/inpaint-samples")
    cli.add_sampling_args(parser, steps=50, scale=10.0, n_iter=1, n_samples=1)
    return parser


def _depth2img() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depth2img.py", description="Redraw an image following a prompt, keeping its depth layout.")
    cli.add_prompt_args(parser, prompt="a professional photograph")
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to start from; resized down to multiples of 64 (required)")
    parser.add_argument("--depth", type=str, default=None,
                        help="depth map of --init-img as an image (grey, RGB or 16-bit; brighter = "
                             "nearer, as MiDaS outputs; any size); without it the model's own depth "
                             "estimator is used (the shapes model has one; MiDaS is not built in, so "
                             "SD 2 depth needs --depth)")
    parser.add_argument("--strength", type=float, default=0.9,
                        help="how much to change the image, in [0, 1] (default: %(default)s)")
    cli.add_output_args(parser, outdir="outputs/depth2img-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=1, n_samples=1, sampler_choice=False)
    return parser


def _upscale() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upscale.py", description="Upscale an image 4x, guided by a prompt.")
    cli.add_prompt_args(parser, prompt="a high quality professional photograph")
    parser.add_argument("--init-img", type=str, default=None,
                        help="the low-resolution image; resized down to multiples of 8 (required)")
    parser.add_argument("--noise_level", "--noise-level", type=int, default=20,
                        help="noise added to the low-resolution image, 0 to the model's maximum "
                             "(349 for x4-upscaling.yaml); more noise lets the model invent more "
                             "detail (default: %(default)s)")
    cli.add_output_args(parser, outdir="outputs/upscale-samples")
    cli.add_sampling_args(parser, steps=50, scale=9.0, n_iter=1, n_samples=1)
    return parser


_TASK_FLAGS: Dict[str, Callable[[], argparse.ArgumentParser]] = {
    "txt2img": _txt2img, "img2img": _img2img, "inpaint": _inpaint, "depth2img": _depth2img, "upscale": _upscale,
}
TASK_NAMES = tuple(_TASK_FLAGS)


def build_parser(task: str) -> argparse.ArgumentParser:
    """The full command line of ``scripts/<task>.py``: the task's own flags, then the model and
    the precision/memory flags every script shares."""
    parser = _TASK_FLAGS[task]()
    cli.add_model_args(parser, *default_model_paths(task))
    cli.add_performance_args(parser)
    return parser


def default_options(task: str) -> argparse.Namespace:
    """Every flag of the task at its default, as the script would parse an empty command line."""
    return build_parser(task).parse_args([])
