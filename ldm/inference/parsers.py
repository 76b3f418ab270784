"""The command line of each task: its flags and defaults, those of the original scripts. The same
parsers give the Python API its defaults (``ldm.load(task)(prompt)`` with no keyword makes what
``python scripts/<task>.py --prompt ...`` makes), so the two cannot drift apart."""
from __future__ import annotations

import argparse
import copy
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from ldm.inference import cli, sampling_parsers
from ldm.inference.errors import UsageError
from ldm.inference.guidance import DEFAULT_GUIDE_CLIP_SCALE, DEFAULT_GUIDE_SCALE
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


def _edit_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to edit; resized down to multiples of 64 (required)")
    parser.add_argument("--source-prompt", "--source_prompt", dest="source_prompt", type=str, default=None,
                        help="a prompt that describes --init-img, used to invert it (required)")
    parser.add_argument("--inversion-steps", "--inversion_steps", dest="inversion_steps", type=int, default=50,
                        help="DDIM steps of the inversion, at guidance scale 1 (default: %(default)s)")
    parser.add_argument("--keep", type=float, default=0.4,
                        help="fraction of the --steps regeneration steps taken from the inverted trajectory, "
                             "in [0, 1]: the regeneration starts from the inverted latent round(keep * steps) "
                             "steps below the top; 0 regenerates from the inverted noise, 1 returns the image "
                             "(default: %(default)s)")
    parser.add_argument("--mask-mode", "--mask_mode", dest="mask_mode", choices=("none", "diffedit"),
                        default="none",
                        help="'diffedit': edit only where the noise predictions for the two prompts differ "
                             "(DiffEdit, Couairon et al. 2022) and keep the inverted source latents elsewhere at "
                             "every step; 'none': regenerate the whole image (default: %(default)s)")
    parser.add_argument("--mask-threshold", "--mask_threshold", dest="mask_threshold", type=float, default=0.5,
                        help="diffedit: the mask is where the prediction difference, rescaled to [0, 1], reaches "
                             "this, in (0, 1) (default: %(default)s)")
    parser.add_argument("--mask-strength", "--mask_strength", dest="mask_strength", type=float, default=0.5,
                        help="diffedit: noise level, as a fraction of the timesteps in (0, 1], at which the "
                             "predictions are compared (default: %(default)s)")
    parser.add_argument("--mask-noises", "--mask_noises", dest="mask_noises", type=int, default=10,
                        help="diffedit: noise draws the difference is averaged over (default: %(default)s)")
    parser.add_argument("--mask-dilate", "--mask_dilate", dest="mask_dilate", type=int, default=0,
                        help="diffedit: grow the mask by this many latent pixels (default: %(default)s)")
    parser.add_argument("--mask-fill", "--mask_fill", dest="mask_fill", choices=("inverted", "noise"),
                        default="inverted",
                        help="diffedit: inside the mask start from the inverted latent ('inverted') or from the "
                             "image latent noised afresh to the start level ('noise': inpaint the region with "
                             "--prompt; with --ddim_eta > 0 re-noised at every step) (default: %(default)s)")
    parser.add_argument("--color-transfer", "--color_transfer", dest="color_transfer", action="store_true",
                        help="recolour an object in place: regenerate the image from its inverted noise with "
                             "--prompt to see the new colour, move the object's latent colour to it where the "
                             "object is (its pixels more colourful than the background), then invert and "
                             "regenerate that latent at --keep with --structure-scale (--keep 0.6 recommended)")
    parser.add_argument("--structure-scale", "--structure_scale", dest="structure_scale", type=float, default=None,
                        help="loss guidance of the regeneration toward the input image's object footprint (where "
                             "its pixels are colourful, whatever the hue); 0 turns it off (default: 10000 with "
                             "--color-transfer, 0 without)")
    parser.add_argument("--inversion-prompt", "--inversion_prompt", dest="inversion_prompt",
                        choices=("source", "empty"), default="source",
                        help="the prompt the image is inverted with: --source-prompt, or the empty prompt as "
                             "DiffEdit (default: %(default)s)")


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
    parser.add_argument("--save-depth", type=str, default=None, metavar="PATH_OR_DIR",
                        help="also write the depth map the model used (its estimate, or --depth), stretched "
                             "to the full range as the model normalises it, as a 16-bit grey PNG: to PATH "
                             "(a new .png file) or numbered depth-NNNNN.png in a folder; never overwrites")


def _upscale_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-img", type=str, default=None,
                        help="the low-resolution image; resized down to multiples of 8 (required)")
    parser.add_argument("--noise_level", "--noise-level", type=int, default=None,
                        help="noise added to the low-resolution image, 0 to the model's maximum "
                             "(349 for x4-upscaling.yaml); more noise lets the model invent more "
                             "detail (default: %(default)s)")


def _unclip_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-img", type=str, default=None,
                        help="the image to make variations of: its CLIP image embedding (the model's own "
                             "embedder) conditions the model; required unless the --prior-* flags are given")
    parser.add_argument("--noise_level", "--noise-level", type=int, default=0,
                        help="noise added to the image embedding, 0 to the model's maximum - 1 (999 for the "
                             "SD 2.1 unCLIP configs); more noise, freer variations (default: %(default)s)")
    group = parser.add_argument_group(
        "Karlo prior", "text to image through the Karlo prior (unCLIP-L): the prompt is made into an image "
                       "embedding instead of --init-img; give all four files")
    group.add_argument("--prior-config", type=str, default=None,
                       help="the prior's config, e.g. configs/karlo/prior_1B_vit_l.yaml")
    group.add_argument("--prior-ckpt", type=str, default=None,
                       help="the prior's weights (prior-ckpt-step=01000000-of-01000000.ckpt)")
    group.add_argument("--prior-clip", type=str, default=None,
                       help="the CLIP ViT-L/14 the prior reads the prompt with: a state dict with OpenAI's names "
                            "or a transformers CLIPModel folder (openai/clip-vit-large-patch14); OpenAI's "
                            "TorchScript ViT-L-14.pt is refused, as it cannot be read safely")
    group.add_argument("--prior-clip-stats", type=str, default=None,
                       help="the CLIP image embedding statistics (ViT-L-14_stats.th)")
    group.add_argument("--prior-steps", type=int, default=25,
                       help="sampling steps of the prior (default: %(default)s, as Karlo)")
    group.add_argument("--prior-scale", type=float, default=4.0,
                       help="classifier-free guidance scale of the prior (default: %(default)s, as Karlo)")


# Flags of the upscale script whose default depends on the model, by model kind: the SD x4
# upscaler's are the SAI demo's; the latent-diffusion BSR model's are its notebook's (100 DDIM steps
# at eta 1, no guidance), with no prompt (it has no text encoder) and no noise level (it sees the
# clean low-resolution image).
_UPSCALE_MODEL_DEFAULTS = {"upscale": dict(steps=50, ddim_eta=0.0, scale=9.0, noise_level=20),
                           "superres": dict(steps=100, ddim_eta=1.0, scale=1.0, noise_level=None, prompt="")}
_MODEL_KIND_NAMES = {"upscale": "the SD x4 upscaler", "superres": "the LDM BSR super-resolution model"}


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
    loss_guidance: bool = False
    model_defaults: Dict[str, Dict[str, Any]] = field(default_factory=dict)


_SCRIPTS: Dict[str, ScriptFlags] = {
    "txt2img": ScriptFlags("Make images from a text prompt.",
                           "a professional photograph of an astronaut riding a triceratops",
                           "a red circle above a blue square", None,
                           dict(steps=50, scale=9.0, n_iter=3, n_samples=3), image_size=True, loss_guidance=True),
    "img2img": ScriptFlags("Redraw an image following a text prompt.", "a painting of a virus monster playing guitar",
                           "a blue square", _image_and_strength(0.8, ": 1 ignores it, 0 keeps it"),
                           dict(steps=50, scale=9.0, n_iter=1, n_samples=2, sampler_choice=False),
                           loss_guidance=True),
    "edit": ScriptFlags("Edit an image by DDIM inversion: invert it with a prompt that describes it, then "
                        "regenerate it with the new prompt.", "a photograph of a dog", "a blue circle", _edit_inputs,
                        dict(steps=50, scale=5.0, n_iter=1, n_samples=1, sampler_choice=False)),
    "inpaint": ScriptFlags("Repaint the masked part of an image.", "", "", _inpaint_inputs,
                           dict(steps=50, scale=10.0, n_iter=1, n_samples=1)),
    "depth2img": ScriptFlags("Redraw an image following a prompt, keeping its depth layout.",
                             "a professional photograph", "a green star", _depth_inputs,
                             dict(steps=50, scale=9.0, n_iter=1, n_samples=1, sampler_choice=False)),
    "upscale": ScriptFlags("Upscale an image 4x: with the SD x4 upscaler guided by a prompt, or with the "
                           "latent-diffusion BSR super-resolution model (no prompt).",
                           "a high quality professional photograph", "a red circle", _upscale_inputs,
                           dict(steps=None, scale=None, n_iter=1, n_samples=1),
                           model_defaults=_UPSCALE_MODEL_DEFAULTS),
    # The Stability demo's defaults (scripts/streamlit/stableunclip.py): 20 DDIM steps, scale 10, 2 x 2 images.
    "unclip": ScriptFlags("Make variations of an image, or images from a prompt through the Karlo prior, with an "
                          "SD 2.1 unCLIP model.", "", "", _unclip_inputs,
                          dict(steps=20, scale=10.0, n_iter=2, n_samples=2), image_size=True),
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
    if flags.loss_guidance:
        cli.add_guidance_args(parser, DEFAULT_GUIDE_SCALE, DEFAULT_GUIDE_CLIP_SCALE)
    if flags.image_size:
        cli.add_size_args(parser)
    cli.add_model_args(parser, *default_model_paths(task))
    cli.add_adapter_args(parser)
    cli.add_performance_args(parser)
    _defaults_named_by_model(parser, flags.model_defaults)
    return parser


def _defaults_named_by_model(parser: argparse.ArgumentParser, by_kind: Dict[str, Dict[str, Any]]) -> None:
    """Flags whose default depends on the model: None in the parser (filled in by
    :func:`complete_model_defaults` once the config is read), each model's value in the help."""
    for action in parser._actions:
        values = {kind: defaults[action.dest] for kind, defaults in by_kind.items() if action.dest in defaults}
        if not values:
            continue
        action.default = None
        text = "; ".join(f"{'not used' if value is None else value} with {_MODEL_KIND_NAMES[kind]}"
                         for kind, value in values.items())
        action.help = action.help.replace("%(default)s", text.replace("%", "%%"))


def complete_model_defaults(task: str, opt: argparse.Namespace, kind: str, sampler_takes_eta: bool) -> None:
    """Give the flags left unset whose default depends on the model (see
    :func:`_defaults_named_by_model`) the default of a model of ``kind`` (the script's first model
    kind for another, which the task then refuses). A default eta applies only to a sampler that
    takes one (DDIM); the others get 0."""
    by_kind = _SCRIPTS[task].model_defaults if task in _SCRIPTS else None
    if not by_kind:
        return
    defaults = by_kind.get(kind) or next(iter(by_kind.values()))
    for name, value in defaults.items():
        if getattr(opt, name, None) is None:
            setattr(opt, name, 0.0 if name == "ddim_eta" and not sampler_takes_eta else value)


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


def numeric_flag(task: str, name: str) -> Optional[Tuple[str, type]]:
    """``(flag, int or float)`` of the numeric option ``name`` of ``task``; None for another."""
    return _numeric_flags(task).get(name)


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
