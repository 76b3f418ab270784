"""How long the default text-to-image model (checkpoints/shapes-txt2img) takes for 4 images at
20 steps on this machine: the whole command as a user types it (a fresh process: imports,
loading, sampling, saving PNGs) and the sampling alone in a warm process.

    python benchmarks/default_txt2img_time.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle above a blue square"
IMAGES, STEPS = 4, 20


def script_seconds(sampler_flags, threads: int) -> float:
    """Wall time of ``python scripts/txt2img.py ...`` in a fresh process."""
    with tempfile.TemporaryDirectory() as outdir:
        command = [sys.executable, str(REPO_ROOT / "scripts" / "txt2img.py"), "--prompt", PROMPT,
                   "--n_samples", str(IMAGES), "--n_iter", "1", "--steps", str(STEPS), "--outdir", outdir,
                   *sampler_flags]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        return time.perf_counter() - start


def sampling_seconds(sampler: str, threads: int, repeats: int) -> float:
    """Median time of text encoding + sampling + decoding of the 4 images, model already loaded."""
    import torch

    import ldm

    torch.set_num_threads(threads)
    pipe = ldm.load("txt2img", device="cpu")
    pipe(PROMPT, n=IMAGES, steps=STEPS, sampler=sampler)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(PROMPT, n=IMAGES, steps=STEPS, sampler=sampler)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    opt = parser.parse_args()
    print(f"{IMAGES} images, {STEPS} steps, 64x64, CPU, {opt.threads} threads, median of {opt.repeats}")
    print("| sampler | whole command (fresh process) | sampling only (warm) |\n|---|---|---|")
    for name, flags, sampler in [("DDIM (script default)", [], "ddim"), ("DPM-Solver (--dpm)", ["--dpm"], "dpm")]:
        whole = statistics.median(script_seconds(flags, opt.threads) for _ in range(opt.repeats))
        warm = sampling_seconds(sampler, opt.threads, opt.repeats)
        print(f"| {name} | {whole:.2f} s | {warm:.2f} s |")


if __name__ == "__main__":
    main()
