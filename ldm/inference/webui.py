"""The web UI's work apart from drawing the page (``scripts/webui.py`` draws it with Gradio; nothing
here imports Gradio): which controls and models a tab offers, the loaded models, one tab's
controls turned into one call of the :class:`~ldm.inference.api.Pipeline` that ``ldm.load`` returns
(images saved as the scripts save them), and a PNG's parameters turned back into controls."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ldm.inference.api import Pipeline, load, prepare_run
from ldm.inference.errors import UsageError
from ldm.inference.images import OutputWriter
from ldm.inference.loading import CHECKPOINT_SUFFIXES, default_model_paths, read_config, read_model_spec
from ldm.inference.parameters import parse_parameters
from ldm.inference.parsers import default_options, default_prompt, numeric_flag
from ldm.inference.runner import write_batches
from ldm.inference.sampling_parsers import PARSERS as PROMPTLESS_TASKS
from ldm.inference.tasks import TASKS
from ldm.models.diffusion.samplers import SAMPLERS, display_name
from ldm.util import in_cwd_or_repository

# The tabs, in page order: the scripts' tasks (unclip: image variations; its Karlo prior is left to the script).
WEB_TASKS = ("txt2img", "img2img", "inpaint", "depth2img", "upscale", "edit", "unclip", "class", "unconditional")
# Tasks whose images can be sent on to another tab ("send to img2img / inpaint").
IMAGE_INPUT_TASKS = ("img2img", "inpaint", "depth2img", "upscale", "edit", "unclip")
# The options a tab shows, in page order, when the task has them (the scripts' flag names). Left out:
# file and output flags (--from-file, --outdir, --skip_*), load settings (server-wide: --device,
# --precision), --fixed_code, --C/--f, --save-depth, the Karlo prior and sample_diffusion.py's -v.
CONTROLS = ("prompt", "negative_prompt", "source_prompt", "classes", "sampler", "steps", "scale", "ddim_eta",
            "strength", "noise_level", "inversion_steps", "keep", "color_transfer", "W", "H", "guide_color",
            "guide_scale", "seed", "n_iter", "n_samples", "batch_size", "token_merging")
LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "source_prompt": "Source prompt (describes the "
          "image)", "classes": "Classes (numbers or names, comma-separated; blank: four spread over the model's)",
          "sampler": "Sampler", "steps": "Steps", "scale": "CFG scale", "ddim_eta": "DDIM eta",
          "strength": "Denoising strength", "noise_level": "Noise level", "inversion_steps": "Inversion steps",
          "keep": "Keep (fraction of steps from the inversion)",
          "color_transfer": "Color transfer (recolour the object in place)", "W": "Width", "H": "Height",
          "guide_color": "Guide colour R,G,B (blank: off)", "guide_scale": "Guide scale (blank: 300)",
          "seed": "Seed (-1: random)", "n_iter": "Batch count", "n_samples": "Batch size",
          "batch_size": "Batch size (blank: as many as fit)",
          "token_merging": "Token merging ratio (0 up to, not including, 1; blank: off)"}
# How many images sample_diffusion.py's tab makes by default (the script's 50000 are for FID, not a page).
UNCONDITIONAL_IMAGES = 4
INPUT_NAMES = {"init_img": "--init-img", "mask": "--mask", "depth": "--depth"}


def task_controls(task: str) -> Dict[str, Any]:
    """``{option: default}`` of the controls of ``task``'s tab, the script's defaults (None: the
    model's own, e.g. the size it was trained at); ``prompt`` the shipped model's default prompt."""
    defaults = vars(default_options(task))
    controls = {name: defaults[name] for name in CONTROLS if name in defaults}
    if task in PROMPTLESS_TASKS:
        for name in ("prompt", "negative_prompt", "n_iter"):
            controls.pop(name, None)
    else:
        controls["prompt"] = default_prompt(task, None) or ""
    if task == "unconditional":  # no guidance to scale (sample_diffusion.py has no --scale)
        controls["n_samples"] = UNCONDITIONAL_IMAGES
        controls.pop("scale")
    if "sampler" in controls or task in PROMPTLESS_TASKS:
        controls["sampler"] = controls.get("sampler") or "ddim"
    return controls


def task_inputs(task: str) -> Tuple[str, ...]:
    """The image inputs of ``task``'s tab (``init_img``, ``mask``, ``depth``)."""
    return tuple(name for name in INPUT_NAMES if name in vars(default_options(task)))


def sampler_choices() -> List[str]:
    return list(SAMPLERS)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def checkpoint_choices(task: str, folder: str = "checkpoints") -> List[str]:
    """The checkpoints a tab's model picker offers: the task's default first, then the others in
    ``folder`` whose config beside them is a model of a kind the task takes (or that have none:
    their config is found from their layout when they are loaded)."""
    default = default_model_paths(task)[1]
    found = [default]
    directory = Path(in_cwd_or_repository(folder))
    for path in sorted(directory.glob("*")):
        if path.suffix not in CHECKPOINT_SUFFIXES:
            continue
        shown = f"{folder}/{path.name}"
        if shown != default and _fits_task(task, path):
            found.append(shown)
    return found


def _fits_task(task: str, ckpt: Path) -> bool:
    config = ckpt.with_suffix(".yaml")
    if not config.is_file():
        return True
    try:
        TASKS[task].check_model_kind(read_model_spec(read_config(str(config)), str(config)), str(config))
    except (UsageError, ValueError, OSError):
        return False
    return True


class ModelCache:
    """The loaded models, by (config, checkpoint): the last ``keep`` used stay loaded. A model
    loaded for one task serves the others that take it (txt2img, img2img and edit share the shapes
    text-to-image model); one generation at a time runs on each model."""

    def __init__(self, device: str = "auto", precision: str = "autocast", keep: int = 1):
        self.device, self.precision, self.keep = device, precision, keep
        self._models: "OrderedDict[Tuple[Optional[str], Optional[str]], Pipeline]" = OrderedDict()
        self._locks: Dict[Tuple[Optional[str], Optional[str]], threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def pipeline(self, task: str, ckpt: Optional[str], config: Optional[str]) -> Iterator[Pipeline]:
        """The pipeline of ``task`` on the model of ``ckpt``/``config`` (both None: the task's shipped
        model, as ``ldm.load(task)``), held for one generation."""
        ckpt, config = _shipped_as_none(task, ckpt, config)
        key = (config, ckpt) if ckpt is not None else default_model_paths(task)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            pipe = self._models.get(key)
            if pipe is None:
                pipe = load(task, ckpt=ckpt, config=config, device=self.device, precision=self.precision)
                with self._guard:
                    self._models[key] = pipe
                    while len(self._models) > self.keep:
                        self._models.popitem(last=False)
            elif pipe.task != task:
                TASKS[task].check_model_kind(pipe.spec, pipe.settings.config)
                pipe = dataclasses.replace(pipe, task=task)
            self._models.move_to_end(key)
            yield pipe


def _shipped_as_none(task: str, ckpt: Optional[str], config: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """Blank fields as None; the task's shipped checkpoint with no config as (None, None), so the
    shipped model loads with its own config exactly as the script loads it."""
    ckpt, config = (ckpt or "").strip() or None, (config or "").strip() or None
    if config is None and ckpt == default_model_paths(task)[1]:
        return None, None
    return ckpt, config


# ---------------------------------------------------------------------------------------------
# Generating
# ---------------------------------------------------------------------------------------------
Progress = Callable[[float, str], None]


@dataclasses.dataclass
class Made:
    """One image of a generation: its file and parameters text."""
    path: Path
    parameters: str


def call_keywords(task: str, values: Dict[str, Any]) -> Tuple[Optional[str], Dict[str, Any]]:
    """A tab's control values as ``(prompt, keywords)`` of a pipeline call: blank fields as the
    scripts' unset flags, batch count x batch size as ``n`` images ``batch_size`` at a time, the
    class list split at commas."""
    values = {name: _typed(task, name, value) for name, value in values.items()}
    prompt = values.pop("prompt", None)
    if task in PROMPTLESS_TASKS:
        values["n"] = values.pop("n_samples")
        if isinstance(values.get("classes"), str):
            values["classes"] = [part.strip() for part in values["classes"].split(",") if part.strip()]
    else:
        count, size = values.pop("n_iter"), values.pop("n_samples")
        for flag, value in (("--n_iter", count), ("--n_samples", size)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        values["n"], values["batch_size"] = count * size, size
    return prompt, values


def _typed(task: str, name: str, value: Any) -> Any:
    """A control's value as the option's type, as the script's flag parses it: a number field's
    9 as 9.0 for a float flag (the images' parameters then read as the script's), a number typed
    in a text field (those whose default is the model's own), blank as unset (None)."""
    flag = numeric_flag(task, name)
    if flag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if flag[1] is float else int(value) if float(value).is_integer() else value
    if not isinstance(value, str) or name in ("prompt", "negative_prompt"):
        return value
    if not value.strip():
        return None
    if flag is None:
        return value
    try:
        return flag[1](value.strip())
    except ValueError:
        kind = "a whole number" if flag[1] is int else "a number"
        raise UsageError(f"{flag[0]} must be {kind}, got {value.strip()!r}") from None


def generate(models: ModelCache, task: str, ckpt: Optional[str], config: Optional[str], values: Dict[str, Any],
             outdir: str, progress: Optional[Progress] = None) -> List[Made]:
    """Make the images a tab asks for with the pipeline of ``ldm.load(task)`` and save them in
    ``<outdir>/<task>-samples/`` as the script would (numbered PNGs with their parameters, never
    over a file; a grid when there are several). A bad value raises the script's UsageError."""
    prompt, keywords = call_keywords(task, values)
    with models.pipeline(task, ckpt, config) as pipe:
        run = prepare_run(task, pipe.options(prompt, **keywords), pipe.spec)
        writer = OutputWriter(str(Path(outdir) / f"{task}-samples"), skip_grid=run.image_count < 2)
        batches = pipe.generate(run, *_progress_listeners(progress, len(run.batches)))
        saved = write_batches(batches, writer, run.opt.n_samples)
    return [Made(path, text) for path, text in saved]


def _progress_listeners(progress: Optional[Progress], batches: int) -> Tuple[Any, Any]:
    """``(on_batch, on_step)`` of :meth:`Pipeline.generate` that report the run's progress as a
    fraction of all its sampler steps and a line such as ``batch 2/3, step 7/20``."""
    if progress is None:
        return None, None
    batch = 0

    def on_batch(index: int, total: int) -> None:
        nonlocal batch
        batch = index
        progress(index / total, f"batch {index + 1}/{total}")

    def on_step(done: int, total: int) -> None:
        progress((batch + done / max(total, 1)) / batches, f"batch {batch + 1}/{batches}, step {done}/{total}")
    return on_batch, on_step


# ---------------------------------------------------------------------------------------------
# Parameters back into controls
# ---------------------------------------------------------------------------------------------
# A1111 parameter keys -> (option, type).
_PARAMETER_OPTIONS = {"Prompt": ("prompt", str), "Negative prompt": ("negative_prompt", str),
                      "Steps": ("steps", int), "CFG scale": ("scale", float), "Seed": ("seed", int),
                      "Size-1": ("W", int), "Size-2": ("H", int), "Denoising strength": ("strength", float),
                      "Noise level": ("noise_level", int), "Source prompt": ("source_prompt", str),
                      "Inversion steps": ("inversion_steps", int), "Keep": ("keep", float),
                      "Token merging ratio": ("token_merging", float),
                      "Color transfer": ("color_transfer", lambda text: text == "True")}


def controls_from_parameters(text: str) -> Dict[str, Any]:
    """The options written in a PNG's ``parameters`` text (ours or A1111's), as control values:
    ``{"prompt": ..., "steps": 20, "sampler": "dpmpp_2m", "seed": 7, ...}``; what cannot be read is
    left out."""
    pairs = parse_parameters(text)
    controls: Dict[str, Any] = {}
    for key, (name, kind) in _PARAMETER_OPTIONS.items():
        if key in pairs:
            with contextlib.suppress(ValueError):
                controls[name] = kind(pairs[key])
    by_display = {display_name(name): name for name in SAMPLERS}
    if pairs.get("Sampler") in by_display:
        controls["sampler"] = by_display[pairs["Sampler"]]
    return controls
