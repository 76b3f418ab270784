"""The run of every script: check flags and inputs, load the model as ``ldm.load`` does, then write
each batch of the :class:`~ldm.inference.api.Pipeline` as numbered PNGs with their generation
parameters, and a grid. Nothing is written before the model is loaded and the inputs are known
to be good."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ldm.inference import cli
from ldm.inference.api import Pipeline, Run, prepare_run
from ldm.inference.distributed import Ranks, make_share, process_group, share_of
from ldm.inference.errors import RunInterrupted, UsageError
from ldm.inference.images import (
    GRID_NAME,
    SAMPLE_NAME,
    OutputWriter,
    grid_of_uint8,
    grid_rows,
    read_parameters,
    read_png_pixels,
    to_uint8,
)
from ldm.inference.loading import ModelPaths, choose_model_paths, read_config, read_model_spec
from ldm.inference.parsers import build_parser


def run_task(opt: argparse.Namespace, task: str) -> List[Path]:
    """Run a script's task with its parsed flags; returns the files written. Under ``torchrun``,
    this process's share of the images (:mod:`ldm.inference.distributed`)."""
    with process_group(opt) as ranks:
        paths = choose_model_paths(task, opt.config, opt.ckpt)
        opt.config, opt.ckpt = paths.config, paths.ckpt
        run = prepare_run(task, opt, read_model_spec(read_config(opt.config), opt.config))
        if ranks is not None:
            return _run_across_processes(opt, task, paths, run, ranks)
        return _run_in_one_process(opt, task, paths, run)


def _run_in_one_process(opt: argparse.Namespace, task: str, paths: ModelPaths, run: Run) -> List[Path]:
    """Samples numbered on from those in ``samples/``, written batch by batch, then the grid."""
    writer = OutputWriter(opt.outdir, skip_save=opt.skip_save, skip_grid=opt.skip_grid)
    pipeline = Pipeline.from_options(task, opt, paths)
    batches = tqdm(pipeline.generate(run), desc="batches", total=len(run.batches), disable=len(run.batches) < 2)
    try:
        write_batches(batches, writer, grid_rows(opt.n_rows, opt.n_samples))
    except KeyboardInterrupt:
        raise RunInterrupted(writer.samples_written, writer.outdir) from None
    _report(writer, run.image_count, run.task.side_outputs)
    return writer.written + run.task.side_outputs


def _run_across_processes(opt: argparse.Namespace, task: str, paths: ModelPaths, run: Run, ranks: Ranks) -> List[Path]:
    """This rank's share of the run as ``samples/<index in the run>.png`` (skipping images made
    already), then, on rank 0 once every rank is done, the grid of all of them from the files."""
    _check_distributable(opt)
    samples = OutputWriter(opt.outdir).samples_dir  # checks --outdir as a run of one process does
    pipeline = Pipeline.from_options(task, opt, paths)
    describe = pipeline.batch_parameters(run)

    def path_of(index: int) -> Path:
        return samples / SAMPLE_NAME.format(index)

    share = share_of(ranks, run.batches, describe, path_of)
    written = make_share(pipeline, run, share, path_of, ranks)
    ranks.barrier()
    if not ranks.is_main:
        return written
    if not opt.skip_grid:
        written.extend(_grid_of_the_run(opt, run, describe, path_of))
    print(f"{share.summary(run.image_count, ranks.world_size)}; all of them in {samples}")
    return written


def _check_distributable(opt: argparse.Namespace) -> None:
    if opt.skip_save:
        raise UsageError("--skip_save: under torchrun the grid is put together from the saved samples; leave "
                         "out --skip_save")
    if getattr(opt, "save_depth", None):
        raise UsageError("--save-depth cannot be used under torchrun; save the depth maps in a run of one process")


def _grid_of_the_run(opt: argparse.Namespace, run: Run, describe, path_of) -> List[Path]:
    """The grid of every image of the run, read back from the files: written under the next free
    grid name, unless a grid with the same pixels and parameters is there already (a rerun)."""
    grid = grid_of_uint8(np.stack([read_png_pixels(path_of(index)) for index in range(run.image_count)]),
                         grid_rows(opt.n_rows, opt.n_samples))
    parameters = describe(run.batches[0])[0]
    outdir = Path(opt.outdir)
    if any(_holds(existing, grid, parameters) for existing in sorted(outdir.glob(GRID_NAME.replace("{:04}", "*")))):
        return []
    return [OutputWriter(opt.outdir).save_grid_array(grid, parameters)]


def _holds(path: Path, pixels: np.ndarray, parameters: str) -> bool:
    """Whether ``path`` is a PNG of these pixels with these generation parameters."""
    try:
        return read_parameters(str(path)) == parameters and np.array_equal(read_png_pixels(path), pixels)
    except (OSError, ValueError):
        return False


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
