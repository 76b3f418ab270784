"""The run of every script: check flags and inputs, load the model as ``ldm.load`` does, then write
each batch of the :class:`~ldm.inference.api.Pipeline` as numbered PNGs with their generation
parameters, and a grid. Nothing is written before the model is loaded and the inputs are known
to be good."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from ldm.inference import cli
from ldm.inference.api import Pipeline, prepare_run
from ldm.inference.errors import RunInterrupted
from ldm.inference.images import OutputWriter, grid_rows, to_uint8
from ldm.inference.loading import choose_model_paths, read_config, read_model_spec
from ldm.inference.parsers import build_parser


def run_task(opt: argparse.Namespace, task: str) -> List[Path]:
    """Run a script's task with its parsed flags; returns the files written."""
    paths = choose_model_paths(task, opt.config, opt.ckpt)
    opt.config, opt.ckpt = paths.config, paths.ckpt
    run = prepare_run(task, opt, read_model_spec(read_config(opt.config), opt.config))
    writer = OutputWriter(opt.outdir, skip_save=opt.skip_save, skip_grid=opt.skip_grid)
    pipeline = Pipeline.from_options(task, opt, paths)
    batches = tqdm(pipeline.generate(run), desc="batches", total=len(run.batches), disable=len(run.batches) < 2)
    try:
        write_batches(batches, writer, grid_rows(opt.n_rows, opt.n_samples))
    except KeyboardInterrupt:
        raise RunInterrupted(writer.samples_written, writer.outdir) from None
    _report(writer, run.image_count, run.task.side_outputs)
    return writer.written + run.task.side_outputs


def write_batches(batches: Iterable[Tuple[Any, torch.Tensor, List[str]]], writer: OutputWriter,
                  grid_row_length: int) -> List[Tuple[Optional[Path], str]]:
    """Write the images of :meth:`Pipeline.generate`'s batches as they come (numbered PNGs with
    their parameters), then their grid; returns each image's file (None with --skip_save) and
    parameters text. The scripts and the web UI save through it, so both name files alike."""
    made, saved = [], []
    for _, images, texts in batches:
        for array, text in zip(to_uint8(images), texts):
            saved.append((writer.save_sample(array, text), text))
        made.append(images)
    if made:
        writer.save_grid(torch.cat(made), grid_row_length, saved[0][1])
    return saved


def main(task: str, argv: Optional[Sequence[str]] = None) -> None:
    """``python scripts/<task>.py [flags]``."""
    cli.run_script(build_parser(task), lambda opt: run_task(opt, task), argv)


def _report(writer: OutputWriter, count: int, side_outputs: Sequence[Path] = ()) -> None:
    if writer.written:
        print(f"{count} image(s) made; written to {writer.outdir}:")
        for path in writer.written:
            print(f"  {path}")
    else:
        print(f"{count} image(s) made; nothing written (--skip_save and --skip_grid)")
    for path in side_outputs:
        print(f"also written: {path}")
