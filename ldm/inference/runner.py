"""The one run of every script: check flags and inputs, load the model, sample batch by batch and
write each image with its generation parameters. Nothing is written before the model is loaded
and the inputs are known to be good."""
from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path
from typing import Callable, ContextManager, List, Type

import torch
from tqdm import tqdm

from ldm.inference.cli import check_positive
from ldm.inference.errors import UsageError
from ldm.inference.images import OutputWriter, grid_rows, to_uint8
from ldm.inference.loading import (choose_model_paths, inference_config, load_model, model_hash, model_name,
                                   read_config, read_model_spec)
from ldm.inference.optimizations import apply_runtime_options
from ldm.inference.parameters import GenerationParameters
from ldm.inference.pipeline import plan_batches, read_prompts
from ldm.inference.precision import autocast_dtype, precision_scope
from ldm.inference.sampler_choice import build_sampler, chosen_sampler
from ldm.models.diffusion.seeding import ImageNoise, seed_global_generators
from ldm.inference.tasks import Task
from ldm.util import pick_device


def choose_device(requested: str) -> torch.device:
    """``--device``: auto, cpu, cuda, cuda:N or mps, and available on this machine."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", requested):
        raise UsageError(f"--device: unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    try:
        return pick_device(None if requested == "auto" else requested)
    except RuntimeError as err:
        raise UsageError(str(err)) from None


def run_task(opt: argparse.Namespace, task_class: Type[Task]) -> List[Path]:
    """Run a script's task with its parsed flags; returns the files written."""
    check_positive(opt, "steps", "n_samples", "n_iter", "repeat")
    opt.config, opt.ckpt = choose_model_paths(task_class.name, opt.config, opt.ckpt)
    config = read_config(opt.config)
    task = task_class(opt, read_model_spec(config))
    sampler_name = chosen_sampler(opt, task.needs_partial_denoising)
    prompts = read_prompts(opt)
    device = choose_device(opt.device)
    dtype = autocast_dtype(device, opt.precision, opt.bf16)
    writer = OutputWriter(opt.outdir, skip_save=opt.skip_save, skip_grid=opt.skip_grid)
    config = inference_config(config, fp16_unet=dtype is not None and device.type != "cpu", ema=opt.ema)
    model = load_model(config, opt.config, opt.ckpt, device, opt.ema)
    apply_runtime_options(model, opt)
    sampler = build_sampler(sampler_name, model)
    task.to_device(device)
    describe = _parameters_writer(opt, task, sampler.display_name)
    batches = list(plan_batches(prompts, opt.n_samples, opt.n_iter, opt.seed, opt.fixed_code))
    made = []
    with torch.no_grad(), precision_scope(device, dtype), _weights_scope(model):
        for batch in tqdm(batches, desc="batches", disable=len(batches) < 2):
            seed_global_generators(batch.seeds[0])
            images = task.generate(model, sampler.sampler, batch, ImageNoise(batch.seeds, device))
            for array, prompt, seed in zip(to_uint8(images), batch.prompts, batch.seeds):
                writer.save_sample(array, describe(prompt, seed))
            made.append(images.cpu())
    first = batches[0]
    writer.save_grid(torch.cat(made), grid_rows(opt.n_rows, opt.n_samples),
                     describe(first.prompts[0], first.seeds[0]))
    _report(writer, sum(len(batch) for batch in batches))
    return writer.written


def _parameters_writer(opt: argparse.Namespace, task: Task, sampler_name: str) -> Callable[[str, int], str]:
    """``(prompt, seed) -> parameters text`` of an image of this run."""
    width, height = task.output_size()
    common = dict(negative_prompt=opt.negative_prompt, steps=opt.steps, sampler=sampler_name,
                  cfg_scale=opt.scale, width=width, height=height, model_hash=model_hash(opt.ckpt),
                  model_name=model_name(opt.ckpt), extra=task.extra_parameters())
    return lambda prompt, seed: GenerationParameters(prompt=prompt, seed=seed, **common).to_text()


def _weights_scope(model: torch.nn.Module) -> ContextManager:
    """Sample with the EMA weights when the model keeps them (a config with ``use_ema`` and no
    --ema/--no-ema), as the originals' ``model.ema_scope()``."""
    return model.ema_scope() if getattr(model, "use_ema", False) else contextlib.nullcontext()


def _report(writer: OutputWriter, count: int) -> None:
    if writer.written:
        print(f"{count} image(s) made; written to {writer.outdir}:")
        for path in writer.written:
            print(f"  {path}")
    else:
        print(f"{count} image(s) made; nothing written (--skip_save and --skip_grid)")
