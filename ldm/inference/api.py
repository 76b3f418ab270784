"""The one generation path: ``ldm.load(task)`` returns a :class:`Pipeline`, a loaded model with
its task, and calling it makes images. The scripts, the evaluation and the web UI all go through
it, so the same options give the same pixels everywhere::

    import ldm
    pipe = ldm.load("txt2img")                      # the shipped shapes model
    images = pipe("a red circle above a blue square", steps=20, scale=5.0, sampler="dpmpp_2m", seed=0, n=4)
    images[0].info["parameters"]                    # A1111 parameters text, also written into saved PNGs

Keywords are the scripts' flag names (``steps``, ``scale``, ``seed``, ``negative_prompt``, ``H``,
``W``, ``strength``, ``mask``, ``depth``, ``noise_level``, ...) with three short forms: ``n``
(images per prompt, ``--n_samples``), ``eta`` (``--ddim_eta``) and ``image`` (``--init-img``,
a path, a PIL image or an array). Defaults are the scripts' defaults. A bad value raises
:class:`~ldm.inference.errors.UsageError` (a ValueError) with the message the script prints.

unCLIP: ``ldm.load("unclip", ckpt=..., config=...)(image="in.png")`` makes variations of an image;
given ``prior_config``, ``prior_ckpt``, ``prior_clip`` and ``prior_clip_stats`` instead of an image,
images of the prompt through the Karlo prior (loaded once for consecutive calls with the same files).

LoRA files and textual-inversion embeddings: ``ldm.load(..., lora=["style.safetensors:0.7"],
embeddings=["easyneg.pt"])``; ``pipe.loras`` / ``pipe.embeddings`` hold their handles (``weight``,
``remove()``; docs/LORA.md).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from ldm.inference.adapters import apply_adapters, check_adapter_options, embedding_parameters, lora_parameters
from ldm.inference.cli import check_positive
from ldm.inference.errors import UsageError
from ldm.inference.images import PARAMETERS_KEY, to_uint8
from ldm.inference.loading import (
    ModelPaths,
    ModelSpec,
    choose_model_paths,
    inference_config,
    load_model,
    model_hash,
    model_name,
    read_config,
    read_model_spec,
)
from ldm.inference.optimizations import apply_runtime_options, check_runtime_options
from ldm.inference.parameters import GenerationParameters
from ldm.inference.parsers import (
    TASK_NAMES,
    check_option_type,
    complete_model_defaults,
    default_options,
    default_prompt,
)
from ldm.inference.pipeline import (
    Batch,
    StepListener,
    check_sampling_numbers,
    check_seed_room,
    plan_batches,
    resolve_seed,
    steps_reported_to,
)
from ldm.inference.precision import (
    autocast_dtype,
    autocast_weight_retyper,
    check_weights_fit_precision,
    precision_scope,
)
from ldm.inference.sampler_choice import (
    build_sampler,
    check_sampler_options,
    chosen_sampler,
    sampler_display_name,
    sampler_takes_eta,
)
from ldm.inference.tasks import TASKS, Task
from ldm.inference.vae import load_vae, vae_parameters, vae_path
from ldm.models.diffusion.seeding import ImageNoise
from ldm.modules.diffusionmodules.deepcache import deep_cache
from ldm.modules.encoders.textual_inversion import EmbeddingHandle
from ldm.modules.lora import LoraHandle
from ldm.modules.token_merging import check_ratio, token_merging
from ldm.util import pick_device

# Settings fixed when the model is loaded (``ldm.load`` keywords), not per call.
LOAD_SETTINGS = ("config", "ckpt", "device", "precision", "bf16", "ema", "compile", "attention_slicing",
                 "vae_tiling", "lora", "embedding", "vae")
# Flags of the scripts' output and batching that a call expresses otherwise (n, batch_size, a return value).
_SCRIPT_ONLY = ("outdir", "skip_save", "skip_grid", "n_rows", "from_file", "n_iter", "n_samples", "repeat",
                "resume", "logdir")
# Short keyword -> the flag's destination.
KEYWORD_FLAGS = {"n": "n_samples", "eta": "ddim_eta", "image": "init_img"}


def choose_device(requested: str) -> torch.device:
    """``device``: auto, cpu, cuda, cuda:N or mps, and available on this machine."""
    if not isinstance(requested, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", requested):
        raise UsageError(f"--device: unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    try:
        return pick_device(None if requested == "auto" else requested)
    except RuntimeError as err:
        raise UsageError(str(err)) from None


def task_options(task: str) -> argparse.Namespace:
    """Every option of ``task`` at the script's default."""
    if task not in TASK_NAMES:
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")
    return default_options(task)


@dataclass
class Run:
    """A checked request: the task with its inputs read, the sampler, and the batches to make."""
    opt: argparse.Namespace
    task: Task
    sampler: str
    batches: List[Batch]

    @property
    def image_count(self) -> int:
        return sum(len(batch) for batch in self.batches)


def check_counts_and_numbers(opt: argparse.Namespace) -> None:
    """The options that need no model and no input file: counts, guidance scale, eta."""
    check_positive(opt, "steps", "n_samples", "n_iter", "repeat")
    if getattr(opt, "n_rows", 0) < 0:
        raise UsageError(f"--n_rows must be 0 (one row per batch) or more, got {opt.n_rows}")
    if opt.repeat != 1 and opt.from_file is None and not isinstance(opt.prompt, (list, tuple)):
        warnings.warn(f"--repeat {opt.repeat} applies to the prompts of --from-file only; ignored", UserWarning,
                      stacklevel=3)
    check_sampling_numbers(opt.scale, 0.0 if opt.ddim_eta is None else opt.ddim_eta)  # None: the task's default
    if opt.cache_interval is not None and opt.cache_interval < 1:
        raise UsageError(f"--cache-interval must be at least 1 (steps between full UNet passes), "
                         f"got {opt.cache_interval}")
    if opt.cache_depth < 0:
        raise UsageError(f"--cache-depth must be 0 or more (UNet blocks at each end), got {opt.cache_depth}")
    if opt.cache_interval is not None and opt.compile:
        raise UsageError("--cache-interval and --compile do not go together (the cache changes the UNet's "
                         "path from step to step); choose one")
    check_token_merging(opt)


def check_token_merging(opt: argparse.Namespace) -> None:
    """``--token-merging``: a ratio in [0, 1), and not with ``--compile``."""
    if opt.token_merging is None:
        return
    try:
        check_ratio(opt.token_merging)
    except ValueError:
        raise UsageError(f"--token-merging must be in [0, 1) (the fraction of tokens merged), "
                         f"got {opt.token_merging}") from None
    if opt.compile:
        raise UsageError("--token-merging and --compile do not go together (merging changes the attention's "
                         "token count from call to call); choose one")


def speed_up_parameters(opt: argparse.Namespace) -> Dict[str, object]:
    """The PNG parameters of the options that trade exactness for speed (only those given): DeepCache's
    and token merging's (A1111's "Token merging ratio")."""
    parameters: Dict[str, object] = {}
    if opt.cache_interval is not None:
        parameters.update({"Cache interval": opt.cache_interval, "Cache depth": opt.cache_depth})
    if opt.token_merging is not None:
        parameters["Token merging ratio"] = opt.token_merging
    return parameters


def prepare_run(task_name: str, opt: argparse.Namespace, spec: ModelSpec) -> Run:
    """Check every option and read every input of a request, before any sampling (and, for the
    scripts, before the model is loaded, so that bad input fails fast and writes nothing)."""
    sampler = chosen_sampler(opt, TASKS[task_name].needs_partial_denoising)
    complete_model_defaults(task_name, opt, spec.kind, sampler_takes_eta(sampler))
    check_counts_and_numbers(opt)
    if opt.prompt is None and opt.from_file is None:
        opt.prompt = default_prompt(task_name, opt.ckpt)
    task = TASKS[task_name](opt, spec)
    sampler = chosen_sampler(opt, task.needs_partial_denoising)  # a task may set it (sample_diffusion.py's -v)
    check_sampler_options(sampler, eta=opt.ddim_eta, blends_known_region=task.blends_known_region)
    prompts, sources = task.requests()
    opt.seed = resolve_seed(opt.seed)
    batches = list(plan_batches(prompts, task.batch_size, opt.n_iter, opt.seed, opt.fixed_code, sources))
    check_seed_room(opt.seed, batches)
    return Run(opt=opt, task=task, sampler=sampler, batches=batches)


@dataclass
class Pipeline:
    """A model loaded for one task. ``pipe(prompt, **options)`` returns PIL images, each with its
    generation parameters in ``image.info["parameters"]``; :meth:`generate` yields the raw batches
    (the scripts write them as they come). ``settings`` holds the load options (config, ckpt,
    device, precision, ...); ``dtype`` is the autocast dtype (None: float32); ``loras`` and
    ``embeddings`` the handles of the LoRA files and embeddings put on the model.

    ``weights_dtype``: under bf16 autocast on a CPU (the default ``precision="autocast"`` on a CPU
    with native bf16) the UNet's and text encoder's linear and convolution weights are stored in
    bf16, cast once from the file as it loads (the same outputs as autocast over float32 weights,
    without the float32 copy). Such a pipeline runs only at that precision: precision is a load
    setting (a call cannot change it), and one whose ``dtype`` was changed afterwards refuses to
    sample with a :class:`~ldm.inference.errors.UsageError`; ``ldm.load(..., precision="full")``
    loads the float32 weights from the file again."""
    task: str
    model: torch.nn.Module
    spec: ModelSpec
    settings: argparse.Namespace
    device: torch.device
    dtype: Optional[torch.dtype]
    loras: List[LoraHandle] = field(default_factory=list)
    embeddings: List[EmbeddingHandle] = field(default_factory=list)
    weights_dtype: Optional[torch.dtype] = None
    _model_hash: Optional[str] = field(default=None, init=False, repr=False)

    @classmethod
    def from_options(cls, task: str, opt: argparse.Namespace, paths: Optional[ModelPaths] = None) -> "Pipeline":
        """Load the model that ``opt.config``/``opt.ckpt`` name (the task's shipped model when both
        are None; ``paths`` when the caller has chosen them already) with the load settings of ``opt``."""
        settings = copy.copy(opt)
        check_runtime_options(settings)
        check_adapter_options(settings)
        vae = vae_path(settings)
        paths = paths or choose_model_paths(task, opt.config, opt.ckpt)
        settings.config, settings.ckpt = paths.config, paths.ckpt
        config = read_config(settings.config)
        spec = read_model_spec(config, settings.config)
        TASKS[task].check_model_kind(spec, settings.config)
        device = choose_device(settings.device)
        dtype = autocast_dtype(device, settings.precision, settings.bf16)
        config = inference_config(config, fp16_unet=dtype is not None and device.type != "cpu", ema=settings.ema)
        retype = autocast_weight_retyper(device, dtype)
        model = load_model(config, paths, device, settings.ema, retype)
        if vae is not None:
            load_vae(model, vae)
        loras, embeddings = apply_adapters(model, settings)
        apply_runtime_options(model, settings)
        return cls(task, model, spec, settings, device, dtype, loras, embeddings,
                   weights_dtype=dtype if retype is not None else None)

    # -- calling ---------------------------------------------------------------------------------
    def options(self, prompt: Union[None, str, Sequence[str]] = None, **keywords: Any) -> argparse.Namespace:
        """The scripts' options for one call: the defaults, the load settings, then ``keywords``.

        ``prompt`` is one prompt (``n`` images of it, in one batch unless ``batch_size`` says
        otherwise) or a list of prompts (``n`` images of each, ``batch_size`` at a time, 1 by
        default); per-prompt inputs (``image``, ``mask``, ``depth``) may then be lists too."""
        opt = task_options(self.task)
        for name in LOAD_SETTINGS:
            setattr(opt, name, getattr(self.settings, name))
        batch_size = keywords.pop("batch_size", None) if "batch_size" not in vars(opt) else None
        for keyword, value in keywords.items():
            name = KEYWORD_FLAGS.get(keyword, keyword)
            if name not in vars(opt) or name in LOAD_SETTINGS or (name in _SCRIPT_ONLY and keyword != "n"):
                raise TypeError(f"{self.task} pipeline got an unexpected keyword {keyword!r}"
                                + (" (set it in ldm.load)" if name in LOAD_SETTINGS else ""))
            check_option_type(self.task, name, value)
            setattr(opt, name, value)
        if prompt is not None:
            opt.prompt = list(prompt) if isinstance(prompt, (list, tuple)) else prompt
        count = opt.n_samples
        if isinstance(opt.prompt, list):
            opt.repeat, opt.n_samples = count, batch_size or 1
        elif batch_size is not None and batch_size < count:
            opt.prompt, opt.repeat, opt.n_samples = [opt.prompt], count, batch_size
        opt.n_iter = 1
        return opt

    def __call__(self, prompt: Union[None, str, Sequence[str]] = None, **keywords: Any) -> List[Image.Image]:
        run = prepare_run(self.task, self.options(prompt, **keywords), self.spec)
        images = []
        for _, pixels, texts in self.generate(run):
            for array, text in zip(to_uint8(pixels), texts):
                image = Image.fromarray(array)
                image.info[PARAMETERS_KEY] = text
                images.append(image)
        return images

    def generate(self, run: Run, on_batch: Optional[Callable[[int, int], None]] = None,
                 on_step: Optional[StepListener] = None) -> Iterator[Tuple[Batch, torch.Tensor, List[str]]]:
        """``(batch, images in [0, 1] [B, 3, H, W] on the CPU, parameters text of each image)``
        per batch of ``run``; every random draw of an image comes from its own seed. ``on_batch(index,
        batches)`` before each batch, ``on_step(steps done, steps)`` after each sampler step of it."""
        check_weights_fit_precision(self.weights_dtype, self.dtype)
        sampler = build_sampler(run.sampler, self.model)
        run.task.to_device(self.device)
        describe = self.batch_parameters(run)
        with torch.no_grad(), precision_scope(self.device, self.dtype), self._weights_scope():
            for index, batch in enumerate(run.batches):
                if on_batch is not None:
                    on_batch(index, len(run.batches))
                with steps_reported_to(on_step), self._speed_ups(run.opt):
                    images = run.task.generate(self.model, sampler.sampler, batch,
                                               ImageNoise(batch.seeds, self.device))
                yield batch, images.cpu(), describe(batch)

    def batch_parameters(self, run: Run) -> Callable[[Batch], List[str]]:
        """``batch -> the parameters text of each of its images``, as :meth:`generate` gives them
        (without sampling: a resumed run compares them with the files already written)."""
        describe = self._parameters_writer(run, sampler_display_name(run.sampler))
        return lambda batch: [describe(prompt, seed) for prompt, seed in zip(batch.prompts, batch.seeds)]

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def unet(self) -> torch.nn.Module:
        """The denoising UNet (the module ``torch.compile`` wrapped, when compiled)."""
        network = self.model.model.diffusion_model
        return getattr(network, "_orig_mod", network)

    @property
    def model_hash(self) -> Optional[str]:
        """A1111's model hash of the checkpoint file, computed once."""
        if self._model_hash is None and self.settings.ckpt is not None:
            self._model_hash = model_hash(self.settings.ckpt)
        return self._model_hash

    def _parameters_writer(self, run: Run, sampler_name: str) -> Callable[[str, int], str]:
        """``(prompt, seed) -> parameters text`` of an image of this run."""
        opt = run.opt
        width, height = run.task.output_size()
        ckpt = self.settings.ckpt
        common = dict(negative_prompt=opt.negative_prompt, steps=opt.steps, sampler=sampler_name,
                      cfg_scale=opt.scale, width=width, height=height,
                      model_name=model_name(ckpt) if ckpt else None)
        extra = {**run.task.extra_parameters(), **run.task.guidance_parameters(), **lora_parameters(self.loras),
                 **speed_up_parameters(opt), **vae_parameters(getattr(self.settings, "vae", None))}

        def describe(prompt: str, seed: int) -> str:
            # The hash reads the whole file (seconds for an SD-size one): asked for once the first
            # images exist, so that sampling does not wait for it.
            used = embedding_parameters(self.embeddings, prompt, opt.negative_prompt)
            return GenerationParameters(prompt=prompt, seed=seed, extra={**extra, **used}, model_hash=self.model_hash,
                                        **common).to_text()
        return describe

    @contextlib.contextmanager
    def _speed_ups(self, opt: argparse.Namespace) -> Iterator[None]:
        """DeepCache and token merging as ``opt`` asks, fresh for each batch (one sampling run), so
        that an image does not depend on the batches before it."""
        with deep_cache(self.unet, opt.cache_interval, opt.cache_depth), token_merging(self.unet, opt.token_merging):
            yield

    def _weights_scope(self) -> ContextManager:
        """Sample with the EMA weights when the model keeps them (a config with ``use_ema`` and no
        ``ema`` choice), as the originals' ``model.ema_scope()``."""
        return self.model.ema_scope() if getattr(self.model, "use_ema", False) else contextlib.nullcontext()


def load(task: str = "txt2img", ckpt: Optional[str] = None, config: Optional[str] = None, device: str = "auto",
         precision: str = "autocast", ema: Optional[bool] = None, *, bf16: bool = False, compile: bool = False,
         attention_slicing: Optional[int] = None, vae_tiling: bool = False,
         lora: Union[None, str, Sequence[str]] = None, embeddings: Union[None, str, Sequence[str]] = None,
         vae: Optional[str] = None) -> Pipeline:
    """Load the model of ``task`` (txt2img, img2img, inpaint, depth2img, upscale, unclip as the scripts
    are named; unconditional for sample_diffusion.py, class for sample_class.py): the shipped
    shapes model when neither ``ckpt`` nor ``config`` is given; with ``ckpt`` alone the config
    beside it or the original config its layout fits, as the scripts pick it. ``lora``: LoRA files
    as ``"FILE[:WEIGHT]"`` (``--lora``); ``embeddings``: textual-inversion embeddings as
    ``"FILE[:TOKEN]"`` (``--embedding``); one string or a list. ``vae``: an autoencoder file whose
    weights replace the model's (``--vae``)."""
    opt = task_options(task)
    if precision not in ("autocast", "full"):
        raise UsageError(f"--precision must be autocast or full, got {precision!r}")
    for name, value in dict(ckpt=ckpt, config=config, device=device, precision=precision, ema=ema, bf16=bf16,
                            compile=compile, attention_slicing=attention_slicing, vae_tiling=vae_tiling, lora=lora,
                            embedding=embeddings, vae=vae).items():
        setattr(opt, name, str(value) if name in ("ckpt", "config") and value is not None else value)
    return Pipeline.from_options(task, opt)
