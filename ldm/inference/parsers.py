"""The command line of each task: its flags and defaults, those of the original scripts. The same
parsers give the Python API its defaults (``ldm.load(task)(prompt)`` with no keyword makes what
``python scripts/<task>.py --prompt ...`` makes), so the two cannot drift apart."""
from __future__ import annotations

import argparse
import copy
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ldm.inference import cli, sampling_parsers
from ldm.inference.errors import UsageError
from ldm.inference.loading import default_model_paths
from ldm.util import in_cwd_or_repository


def _image_and_strength(strength: float, meaning: str) -> Callable[[argparse.ArgumentParser], None]:
    """img2img's and depth2img's ``--init-img`` and ``--strength``."""
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--init-img", type=str, nargs="?", default=None,
                            help="the image to start from; resized down to multiples of 64 (required)")
        parser.add_argument("--strength", type=float, default=strength,
                            help=f"how much to change the image, in [0, 1]{meaning} (default: %(default)s)")
    return add


def _inpaint_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to inpaint; resized down to multiples of 64 (required)")
    parser.add_argument("--mask", type=str, default=None,
                        help="mask image of the same size, white where to repaint (binarised at "
                             "50%% grey) (required)")


def _depth_inputs(parser: argparse.ArgumentParser) -> None:
    _image_and_strength(0.9, "")(parser)
    parser.add_argument("--depth", type=str, default=None,
                        help="depth map of --init-img as an image (grey, RGB or 16-bit; brighter = "
                             "nearer, as MiDaS outputs; any size); without it the model's own depth "
                             "estimator is used (MiDaS DPT-Hybrid for SD 2 depth, as the original demo)")


def _upscale_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-img", type=str, default=None,
                        help="the low-resolution image; resized down to multiples of 8 (required)")
    parser.add_argument("--noise_level", "--noise-level", type=int, default=20,
                        help="noise added to the low-resolution image, 0 to the model's maximum "
                             "(349 for x4-upscaling.yaml); more noise lets the model invent more "
                             "detail (default: %(default)s)")


@dataclass(frozen=True)
class ScriptFlags:
    """What one script's command line holds besides the shared groups: its description, default
    prompt, task inputs, output folder and sampling defaults (those of the original scripts)."""
    description: str
    prompt: str
    shapes_prompt: str
    inputs: Optional[Callable[[argparse.ArgumentParser], None]]
    sampling: Dict[str, Any]
    image_size: bool = False


_SCRIPTS: Dict[str, ScriptFlags] = {
    "txt2img": ScriptFlags("Make images from a text prompt.",
                           "a professional photograph of an astronaut riding a triceratops",
                           "a red circle above a blue square", None,
                           dict(steps=50, scale=9.0, n_iter=3, n_samples=3), image_size=True),
    "img2img": ScriptFlags("Redraw an image following a text prompt.", "a painting of a virus monster playing guitar",
                           "a blue square", _image_and_strength(0.8, ": 1 ignores it, 0 keeps it"),
                           dict(steps=50, scale=9.0, n_iter=1, n_samples=2, sampler_choice=False)),
    "inpaint": ScriptFlags("Repaint the masked part of an image.", "", "", _inpaint_inputs,
                           dict(steps=50, scale=10.0, n_iter=1, n_samples=1)),
    "depth2img": ScriptFlags("Redraw an image following a prompt, keeping its depth layout.",
                             "a professional photograph", "a green star", _depth_inputs,
                             dict(steps=50, scale=9.0, n_iter=1, n_samples=1, sampler_choice=False)),
    "upscale": ScriptFlags("Upscale an image 4x, guided by a prompt.", "a high quality professional photograph",
                           "a red circle", _upscale_inputs, dict(steps=50, scale=9.0, n_iter=1, n_samples=1)),
}
TASK_NAMES = tuple(_SCRIPTS) + tuple(sampling_parsers.PARSERS)


def build_parser(task: str) -> argparse.ArgumentParser:
    """The full command line of ``scripts/<task>.py``: prompts, the task's inputs, outputs,
    sampling, then the model and the precision/memory flags every script shares (the scripts of
    models without a prompt: :mod:`ldm.inference.sampling_parsers`)."""
    if task in sampling_parsers.PARSERS:
        return sampling_parsers.PARSERS[task]()
    flags = _SCRIPTS[task]
    parser = argparse.ArgumentParser(prog=f"{task}.py", description=flags.description)
    cli.add_prompt_args(parser, prompt=flags.prompt, shapes_prompt=flags.shapes_prompt)
    if flags.inputs is not None:
        flags.inputs(parser)
    cli.add_output_args(parser, outdir=f"outputs/{task}-samples")
    cli.add_sampling_args(parser, **flags.sampling)
    if flags.image_size:
        cli.add_size_args(parser)
    cli.add_model_args(parser, *default_model_paths(task))
    cli.add_performance_args(parser)
    return parser


def default_prompt(task: str, ckpt: Optional[str]) -> Optional[str]:
    """The prompt when none is given: one the shipped shapes model understands when it is the
    model (no --ckpt), else the original script's default; None for tasks without prompts."""
    if task not in _SCRIPTS:
        return None
    flags = _SCRIPTS[task]
    shipped = in_cwd_or_repository(default_model_paths(task)[1])
    if ckpt is None or os.path.realpath(in_cwd_or_repository(ckpt)) == os.path.realpath(shipped):
        return flags.shapes_prompt
    return flags.prompt


@functools.lru_cache(maxsize=None)
def _numeric_flags(task: str) -> Dict[str, Tuple[str, type]]:
    """``dest -> (flag, int or float)`` of the task's numeric flags."""
    return {action.dest: (action.option_strings[0], action.type) for action in build_parser(task)._actions
            if action.type in (int, float)}


def check_option_type(task: str, name: str, value: Any) -> None:
    """An option given from Python must have the type its flag parses to (an int for ``--steps``,
    a number for ``--scale``); the message names the flag as the script would."""
    if name not in _numeric_flags(task) or value is None:
        return
    flag, kind = _numeric_flags(task)[name]
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise UsageError(f"{flag} must be {'a whole number' if kind is int else 'a number'}, got {value!r}")


@functools.lru_cache(maxsize=None)
def _defaults(task: str) -> argparse.Namespace:
    return build_parser(task).parse_args([])


def default_options(task: str) -> argparse.Namespace:
    """Every flag of the task at its default, as the script would parse an empty command line (a
    fresh copy each time: callers set options on it)."""
    return copy.copy(_defaults(task))
