"""The run of ``scripts/sample_diffusion.py``: the model ``-r`` names (a training logdir or a
checkpoint), sampled through the one generation path, written in the CompVis script's layout::

    <logdir>/samples/<global step:08>/<YYYY-mm-dd-HH-MM-SS>/
        img/sample_000000.png ...              each with its generation parameters
        numpy/<N>x<H>x<W>x<C>-samples.npz      uint8 NHWC under ``arr_0``, the input of FID tools
        sampling_config.yaml                   the options of the run

``<logdir>`` is the run's folder (the logdir holding ``checkpoints/``, else the checkpoint's folder),
or ``LOGDIR/<its name>`` with ``-l LOGDIR``. Nothing is replaced: a run gets a new time folder,
and the ``.npz`` is streamed to a hidden file (not all samples in memory) that takes its name only
when every sample is in it. Under ``torchrun`` (:mod:`ldm.inference.distributed`) every process
writes its share into one time folder, a rerun of the same command carries on the newest unfinished
folder of its run (same ``sampling_config.yaml``, no ``.npz`` yet), and rank 0 writes the ``.npz``
from the PNGs once all are made.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from ldm.inference import cli
from ldm.inference.api import Pipeline, Run, prepare_run
from ldm.inference.distributed import Ranks, make_share, process_group, share_of
from ldm.inference.errors import RunInterrupted, UsageError
from ldm.inference.images import check_output_folder, place_without_replacing, read_png_pixels, save_png, to_uint8
from ldm.inference.loading import (
    ModelPaths,
    config_for_checkpoint,
    default_model_paths,
    read_config,
    read_model_spec,
)
from ldm.inference.parsers import build_parser
from ldm.util import CheckpointError, checkpoint_metadata, in_cwd_or_repository

TASK = "unconditional"
TIME_FORMAT = "%Y-%m-%d-%H-%M-%S"  # the original's folder names
SAMPLE_NAME = "sample_{:06}.png"
NPZ_SUFFIX = "-samples.npz"
RESUME_FLAG = "-r/--resume"


# ---------------------------------------------------------------------------------------------
# Which model, and where its run lives
# ---------------------------------------------------------------------------------------------
@dataclass
class ResumedRun:
    """The config and checkpoint ``-r`` names, and the run folder the samples go under."""
    paths: ModelPaths
    logdir: Path


def resolve_resume(resume: Optional[str], config: Optional[str]) -> ResumedRun:
    """``-r``: a main.py logdir (``checkpoints/last.ckpt`` + the latest ``configs/*-project.yaml``),
    a folder of the original's model downloads (``model.ckpt`` + ``config.yaml``) or a checkpoint
    (with ``--config``, else the ``<name>.yaml`` beside it, else its logdir's configs); the shipped
    shapes DDPM when not given. A config found rather than named by the user is trusted only when
    it is the user's own training config (``main.py --resume`` trusts it likewise)."""
    path = Path(resume if resume is not None else in_cwd_or_repository(default_model_paths(TASK)[1]))
    if not path.exists():
        raise UsageError(f"{RESUME_FLAG}: not found: {path}")
    if path.is_dir():
        return _from_logdir(path, config)
    return _from_checkpoint(path, config)


def _latest_project_config(logdir: Path) -> Optional[Path]:
    """The newest ``configs/<time>-project.yaml`` of a main.py logdir (each resume writes the
    whole merged config again)."""
    projects = sorted((logdir / "configs").glob("*-project.yaml"))
    return projects[-1] if projects else None


def _from_logdir(logdir: Path, config: Optional[str]) -> ResumedRun:
    last, original = logdir / "checkpoints" / "last.ckpt", logdir / "model.ckpt"
    if last.is_file():
        found = _latest_project_config(logdir)
        if config is None and found is None:
            raise UsageError(f"{RESUME_FLAG}: {logdir} has checkpoints/last.ckpt but no configs/*-project.yaml; "
                             "pass --config")
        return ResumedRun(ModelPaths(config or str(found), str(last)), logdir)
    if original.is_file():
        beside = logdir / "config.yaml"
        if config is None and not beside.is_file():
            raise UsageError(f"{RESUME_FLAG}: {logdir} has model.ckpt but no config.yaml; pass --config")
        return ResumedRun(ModelPaths(config or str(beside), str(original), config_trusted=config is not None), logdir)
    raise UsageError(f"{RESUME_FLAG}: {logdir} holds neither checkpoints/last.ckpt (a main.py logdir) nor "
                     "model.ckpt (a model folder of the original); pass a checkpoint file")


def _from_checkpoint(ckpt: Path, config: Optional[str]) -> ResumedRun:
    """A checkpoint in ``<logdir>/checkpoints/`` of a main.py run belongs to that logdir (which has
    ``configs/*-project.yaml``); any other to its own folder."""
    found = _latest_project_config(ckpt.parent.parent) if ckpt.parent.name == "checkpoints" else None
    logdir = ckpt.parent.parent if found is not None else ckpt.parent
    if config is not None:
        return ResumedRun(ModelPaths(config, str(ckpt)), logdir)
    if ckpt.with_suffix(".yaml").is_file():
        return ResumedRun(config_for_checkpoint(str(ckpt)), logdir)
    if found is not None:
        return ResumedRun(ModelPaths(str(found), str(ckpt)), logdir)
    if (logdir / "config.yaml").is_file():
        return ResumedRun(ModelPaths(str(logdir / "config.yaml"), str(ckpt), config_trusted=False), logdir)
    raise UsageError(f"{RESUME_FLAG}: no config for {ckpt} ({ckpt.with_suffix('.yaml').name} beside it, its "
                     "logdir's configs/*-project.yaml or config.yaml); pass --config")


def global_step(ckpt: str) -> int:
    """The training step the checkpoint was saved at (0 when it does not say)."""
    try:
        step = checkpoint_metadata(ckpt).get("global_step", 0)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    return step if isinstance(step, int) and step >= 0 else 0


def samples_logdir(run_logdir: Path, logdir_flag: str) -> Path:
    """The run's folder, or ``-l LOGDIR``/<its name> (the original's "extra logdir")."""
    if logdir_flag in (None, "none"):
        return run_logdir
    return Path(logdir_flag) / run_logdir.resolve().name


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class NpzStream:
    """One uint8 array of a known shape written a batch at a time into ``path`` as ``np.savez``
    writes it (an uncompressed zip holding ``arr_0.npy``), under a hidden name until
    :meth:`close`; never replaces an existing file."""

    def __init__(self, path: Path, shape: Sequence[int]):
        self.path, self.shape, self.rows = path, tuple(shape), 0
        self.partial = path.with_name(f".{path.name}.part")
        self._zip = zipfile.ZipFile(self.partial, "x", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._member, header)

    def append(self, rows: np.ndarray) -> None:
        if rows.dtype != np.uint8 or rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"rows of shape {rows.shape} ({rows.dtype}) do not continue an array of {self.shape}")
        self._member.write(np.ascontiguousarray(rows).tobytes())
        self.rows += len(rows)

    def close(self) -> Path:
        """Finish the file and give it its name (once every row is in)."""
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.rows} of {self.shape[0]} rows written")
        self._member.close()
        self._zip.close()
        place_without_replacing(str(self.partial), self.path)
        self.partial.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        self._member.close()
        self._zip.close()
        self.partial.unlink(missing_ok=True)


class SampleFolder:
    """``<logdir>/samples/<step:08>/<time>/`` with ``img/``, ``numpy/`` and ``sampling_config.yaml``,
    created at :meth:`start` (a taken time folder gets a ``-1``, ``-2``, ... suffix)."""

    def __init__(self, logdir: Path, step: int, now: Optional[datetime.datetime] = None):
        self.parent = logdir / "samples" / f"{step:08}"
        self.stamp = (now or datetime.datetime.now()).strftime(TIME_FORMAT)
        self.root = self.parent / self.stamp
        self.written: List[Path] = []
        self._npz: Optional[NpzStream] = None

    @property
    def images_saved(self) -> int:
        return len(self.written)

    def start(self, options: dict) -> None:
        with self._failing_in_one_line():
            for suffix in ("", *(f"-{n}" for n in range(1, 1000))):
                self.root = self.parent / f"{self.stamp}{suffix}"
                try:
                    self.root.mkdir(parents=True)
                    break
                except FileExistsError:
                    continue
            (self.root / "img").mkdir()
            (self.root / "numpy").mkdir()
            with open(self.root / "sampling_config.yaml", "x", encoding="utf-8") as handle:
                yaml.safe_dump(options, handle, default_flow_style=False, sort_keys=False)

    def add(self, images: np.ndarray, texts: Sequence[str], total: int) -> None:
        """A batch of uint8 ``[B, H, W, C]`` images, ``total`` in the run."""
        with self._failing_in_one_line():
            for array, text in zip(images, texts):
                path = self.sample_path(self.images_saved)
                save_png(array, path, text)
                self.written.append(path)
            self._stream(images, total)

    def sample_path(self, index: int) -> Path:
        return self.root / "img" / SAMPLE_NAME.format(index)

    def resume_or_start(self, options: dict) -> Path:
        """The newest unfinished folder (no ``.npz`` yet) of a run with these very options, else a
        new one (:meth:`start`): under torchrun a rerun of the same command carries on its run."""
        recorded = yaml.safe_load(yaml.safe_dump(options, sort_keys=False))
        for candidate in sorted(self.parent.glob("*"), reverse=True):
            config = candidate / "sampling_config.yaml"
            if config.is_file() and not any((candidate / "numpy").glob(f"*{NPZ_SUFFIX}")) and \
                    yaml.safe_load(config.read_text(encoding="utf-8")) == recorded:
                self.root = candidate
                return self.root
        self.start(options)
        return self.root

    def assemble_npz(self, total: int) -> Path:
        """The ``.npz`` of every sample of the run, read back from the PNGs in order (rank 0, once
        every rank has written its share)."""
        with self._failing_in_one_line():
            for index in range(total):
                self._stream(read_png_pixels(self.sample_path(index))[None], total)
            return self._npz.close()

    def _stream(self, images: np.ndarray, total: int) -> None:
        if self._npz is None:
            shape = (total, *images.shape[1:])
            self._npz = NpzStream(self.root / "numpy" / f"{'x'.join(map(str, shape))}{NPZ_SUFFIX}", shape)
        self._npz.append(images)

    @contextlib.contextmanager
    def _failing_in_one_line(self) -> Iterator[None]:
        """A full disk or a folder gone read-only: one line saying how many images are safe."""
        try:
            yield
        except OSError as err:
            self.discard_npz()
            raise UsageError(f"cannot write in {self.root} ({err.strerror or err}); {self.images_saved} "
                             f"image(s) saved") from None

    def finish(self) -> Path:
        with self._failing_in_one_line():
            return self._npz.close()

    def discard_npz(self) -> None:
        if self._npz is not None:
            self._npz.discard()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _recorded_options(opt: argparse.Namespace, sampler: str, step: int) -> dict:
    """What ``sampling_config.yaml`` records: the original's options, then ours."""
    return {"resume": opt.resume, "n_samples": opt.n_samples, "eta": opt.ddim_eta,
            "vanilla_sample": opt.vanilla_sample, "logdir": opt.logdir, "custom_steps": opt.steps,
            "batch_size": opt.batch_size, "sampler": sampler, "seed": opt.seed, "config": str(opt.config),
            "ckpt": str(opt.ckpt), "global_step": step, "device": opt.device, "precision": opt.precision}


def run_unconditional(opt: argparse.Namespace) -> SampleFolder:
    """Check everything, load the model, then write every batch as it comes (under ``torchrun``,
    this process's share of them: :mod:`ldm.inference.distributed`)."""
    with process_group(opt) as ranks:
        resumed = resolve_resume(opt.resume, opt.config)
        opt.config, opt.ckpt = resumed.paths.config, resumed.paths.ckpt
        run = prepare_run(TASK, opt, read_model_spec(read_config(opt.config), opt.config))
        step = global_step(opt.ckpt)
        folder = SampleFolder(samples_logdir(resumed.logdir, opt.logdir), step)
        check_output_folder(folder.root)
        pipeline = Pipeline.from_options(TASK, opt, resumed.paths)
        if ranks is None or ranks.is_main:
            eta = f", eta {opt.ddim_eta}" if opt.ddim_eta else ""
            print(f"{run.image_count} samples with {run.sampler} ({opt.steps} steps{eta}), "
                  f"batches of {run.task.batch_size}, from {opt.ckpt} (global step {step})")
        options = _recorded_options(opt, run.sampler, step)
        if ranks is not None:
            return _sample_across_processes(folder, pipeline, run, options, ranks)
        return _sample_in_one_process(folder, pipeline, run, options)


def _sample_in_one_process(folder: SampleFolder, pipeline: Pipeline, run: Run, options: dict) -> SampleFolder:
    folder.start(options)
    batches = tqdm(pipeline.generate(run), desc="batches", total=len(run.batches), disable=len(run.batches) < 2)
    try:
        for _, images, texts in batches:
            folder.add(to_uint8(images), texts, run.image_count)
        npz = folder.finish()
    except KeyboardInterrupt:
        folder.discard_npz()
        raise RunInterrupted(folder.images_saved, folder.root / "img") from None
    print(f"{folder.images_saved} samples written to {folder.root / 'img'}; all of them in {npz}")
    return folder


def _sample_across_processes(folder: SampleFolder, pipeline: Pipeline, run: Run, options: dict,
                             ranks: Ranks) -> SampleFolder:
    """Rank 0 picks the folder (the unfinished one of the same run, else a new one); each rank
    writes its share as ``img/sample_<index in the run>.png``; rank 0 then makes the ``.npz``."""
    folder.root = ranks.from_main(lambda: folder.resume_or_start(options))
    share = share_of(ranks, run.batches, pipeline.batch_parameters(run), folder.sample_path)
    folder.written = make_share(pipeline, run, share, folder.sample_path, ranks)
    ranks.barrier()
    if ranks.is_main:
        npz = folder.assemble_npz(run.image_count)
        print(f"{share.summary(run.image_count, ranks.world_size)}; all {run.image_count} samples in "
              f"{folder.root / 'img'} and {npz}")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python scripts/sample_diffusion.py [flags]``."""
    cli.run_script(build_parser(TASK), run_unconditional, argv)
