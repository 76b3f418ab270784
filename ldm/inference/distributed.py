"""Sampling across processes and machines: a script started by ``torchrun`` makes a share of the
run's images in each process ("rank"), and all of them land in one output folder.

- The run is planned as one process plans it (:func:`~ldm.inference.pipeline.plan_batches`: the
  same batches, image ``i`` from seed ``--seed + i``). The batches still to make are dealt to the
  ranks in turn, so each image is made in the same batch from the same seed as by one process, and
  its file has the same bytes.
- An image's file is named by its index in the run, so ranks never collide and a rerun finds what is
  made: a file under an image's name whose PNG ``parameters`` text is the one that image gets counts
  as made and is skipped; a file there with other parameters (another run's, a user's) stops the run
  before any sampling, and is never overwritten.
- What needs every image (the grid, sample_diffusion.py's ``.npz``) is assembled by rank 0 from the
  files after a barrier; the output folder must therefore be one that every rank sees (a shared
  file system across machines).

Each rank samples on ``cuda:LOCAL_RANK`` when CUDA is there (NCCL), else as ``--device`` says (gloo).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist
from tqdm import tqdm

from ldm.inference.api import Pipeline, Run
from ldm.inference.errors import RunInterrupted, UsageError
from ldm.inference.images import read_parameters, save_png, to_uint8
from ldm.inference.pipeline import Batch, resolve_seed

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Ranks that finish first wait at the barrier for the slowest (at most one batch behind), and all
# wait while rank 0 looks for images already made: generous, as a batch on a CPU can take minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)

Result = TypeVar("Result")
PathOf = Callable[[int], Path]  # index of an image in the run -> its file
Described = Callable[[Batch], List[str]]  # a batch -> the parameters text of each of its images


# ---------------------------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: its rank among ``world_size``."""
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, compute: Callable[[], Result]) -> Result:
        """Run ``compute`` on rank 0 only and hand its result to every rank; a UsageError it raises
        is raised on every rank (each then exits with that one line)."""
        box: list = [None]
        if self.is_main:
            try:
                box[0] = (True, compute())
            except UsageError as err:
                box[0] = (False, str(err))
        dist.broadcast_object_list(box, src=0)
        succeeded, value = box[0]
        if not succeeded:
            raise UsageError(value)
        return value

    def barrier(self) -> None:
        dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process is one of a group that ``torchrun`` started (it sets these variables)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def rank_device(requested: str, local_rank: int) -> str:
    """The device of the rank ``local_rank`` of its machine: ``cuda:LOCAL_RANK`` for ``auto`` or
    ``cuda`` when CUDA is there, else ``requested`` (the CPU or MPS, shared by the machine's ranks)."""
    if re.fullmatch(r"cuda:\d+", str(requested)):
        raise UsageError(f"--device {requested}: under torchrun each process takes cuda:LOCAL_RANK; give --device "
                         "cuda or auto (CUDA_VISIBLE_DEVICES chooses the GPUs)")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return requested


@contextlib.contextmanager
def process_group(opt: argparse.Namespace) -> Iterator[Optional[Ranks]]:
    """Join the group ``torchrun`` started (NCCL on GPUs, gloo otherwise; a group the caller has
    started already is used as it is) and set ``opt.device`` to this rank's device and ``opt.seed``
    to the one rank 0 chose (``--seed -1`` draws it there); yields None, changing nothing, in a
    process ``torchrun`` did not start."""
    if not launched_by_torchrun():
        yield None
        return
    device = rank_device(opt.device, int(os.environ["LOCAL_RANK"]))
    on_gpu = device.startswith("cuda:")
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=torch.device(device) if on_gpu else None)
    try:
        ranks = Ranks(dist.get_rank(), dist.get_world_size())
        opt.device = device
        opt.seed = ranks.from_main(lambda: resolve_seed(opt.seed))
        yield ranks
    finally:
        if joined:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Sharing out a run, and finding what is made
# ---------------------------------------------------------------------------------------------
def first_indices(batches: List[Batch]) -> List[int]:
    """The index in the run of the first image of each batch."""
    firsts, index = [], 0
    for batch in batches:
        firsts.append(index)
        index += len(batch)
    return firsts


def already_made(path: Path, parameters: str) -> bool:
    """Whether the image is made: ``path`` holds a PNG with these generation parameters. False when
    there is no such file; a UsageError when something else is there (nothing is overwritten)."""
    if not os.path.lexists(path):
        return False
    try:
        found = read_parameters(str(path))
    except (OSError, ValueError):
        found = None
    if found != parameters:
        raise UsageError(f"{path} exists but is not this run's image (its generation parameters differ); give "
                         "another output folder, or remove the file (nothing is overwritten)")
    return True


def unmade_batches(batches: List[Batch], describe: Described, path_of: PathOf) -> Tuple[List[int], int]:
    """Positions of the batches with at least one image not made yet, and how many images are made
    (every file is checked, so a foreign file anywhere stops the run before any sampling)."""
    unmade, made_count = [], 0
    for position, (first, batch) in enumerate(zip(first_indices(batches), batches)):
        made = [already_made(path_of(first + offset), text) for offset, text in enumerate(describe(batch))]
        made_count += sum(made)
        if not all(made):
            unmade.append(position)
    return unmade, made_count


@dataclass
class Share:
    """The batches of one rank, each with the run index of its first image; for the whole run, the
    images there already (from an earlier, interrupted run) and the batches left to sample."""
    batches: List[Tuple[int, Batch]]
    made_before: int
    batches_left: int

    def summary(self, image_count: int, world_size: int) -> str:
        return (f"{self.made_before} of {image_count} image(s) were there already; {world_size} process(es) "
                f"sampled the {self.batches_left} batch(es) with the others")


def share_of(ranks: Ranks, batches: List[Batch], describe: Described, path_of: PathOf) -> Share:
    """Rank 0 looks for the images made already; the batches still to make are dealt in turn."""
    unmade, made = ranks.from_main(lambda: unmade_batches(batches, describe, path_of))
    firsts = first_indices(batches)
    mine = [(firsts[position], batches[position]) for position in unmade[ranks.rank::ranks.world_size]]
    return Share(mine, made, len(unmade))


def make_share(pipeline: Pipeline, run: Run, share: Share, path_of: PathOf, ranks: Ranks) -> List[Path]:
    """Sample this rank's batches of ``run`` and write each image not made yet under its name;
    the files written."""
    written: List[Path] = []
    mine = dataclasses.replace(run, batches=[batch for _, batch in share.batches])
    batches = tqdm(pipeline.generate(mine), desc=f"batches (rank {ranks.rank})", total=len(share.batches),
                   disable=not ranks.is_main or len(share.batches) < 2)
    try:
        for (first, _), (_, images, texts) in zip(share.batches, batches):
            for offset, (array, text) in enumerate(zip(to_uint8(images), texts)):
                path = path_of(first + offset)
                if not already_made(path, text):
                    _write_sample(path, array, text, len(written))
                    written.append(path)
    except KeyboardInterrupt:
        raise RunInterrupted(len(written), path_of(0).parent) from None
    return written


def _write_sample(path: Path, array, parameters: str, saved: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(array, path, parameters)
    except OSError as err:
        raise UsageError(f"cannot write in {path.parent} ({err.strerror or err}); {saved} image(s) saved by this "
                         "process") from None
