"""Time and peak memory of decoding one latent with the Stable Diffusion VAE (KL-f8), ours plain
and tiled against diffusers' AutoencoderKL (plain and ``enable_tiling()``) with the same weights.

Each mode runs in a fresh subprocess so its peak memory is its own: on CUDA the peak of
``torch.cuda.max_memory_allocated``, on CPU the growth of the process's peak RSS during decoding.
Weights are random (seeded), shared through diffusers' own single-file converter; outputs of
ours and diffusers are compared (plain with plain, tiled with tiled).

    python benchmarks/vae_decode.py --size 1024 --repeats 2
    python benchmarks/vae_decode.py --size 256 --modes ours ours-tiled --tile 16 --overlap 4

fp32 on CPU; on CUDA the default dtype is fp16. Needs ``pip install -e ".[bench]"``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    CONFIGS,
    DTYPES,
    current_rss_bytes,
    diffusers_vae,
    peak_rss_bytes,
    reset_peak_rss,
    resolve_dtype,
)
from ldm.util import instantiate_from_config, pick_device  # noqa: E402

CONFIG = CONFIGS["sd1"]
MODES = ("ours", "ours-tiled", "diffusers", "diffusers-tiled")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="output image side in pixels (multiple of 8)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tile", type=int, default=64, help="our tile size in latent pixels")
    parser.add_argument("--overlap", type=int, default=16, help="our tile overlap in latent pixels")
    parser.add_argument("--repeats", type=int, default=2, help="timed decodes per mode (after one warm-up)")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: best available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, else fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_ours(seed: int):
    config = OmegaConf.load(CONFIG)
    torch.manual_seed(seed)
    return instantiate_from_config(config.model.params.first_stage_config).eval()


def run_child(args: argparse.Namespace) -> None:
    """Decode in this process and write timings, peak memory and the image to ``args.out``."""
    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    ours = build_ours(args.seed)
    model = diffusers_vae(ours, OmegaConf.load(CONFIG)) if args.child.startswith("diffusers") else ours
    if model is not ours:
        del ours
    model = model.to(device=device, dtype=dtype)
    if args.child == "ours-tiled":
        model.enable_tiling(tile_size=args.tile, overlap=args.overlap)
    elif args.child == "diffusers-tiled":
        model.enable_tiling()
    decode = (lambda z: model.decode(z).sample) if args.child.startswith("diffusers") else model.decode
    latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(args.seed))
    latent = latent.to(device=device, dtype=dtype)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss_before = current_rss_bytes()
        peak_was_reset = reset_peak_rss()  # else the peak of building the model may hide the decode's
        for _ in range(args.repeats + 1):
            synchronize()
            start = time.perf_counter()
            image = decode(latent)
            synchronize()
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak_rss = peak_rss_bytes() if peak_was_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = peak_rss - rss_before
    torch.save({"image": image.float().cpu(), "times": times[1:], "peak": peak, "device": str(device),
                "dtype": str(dtype)}, args.out)


def run_mode(mode: str, args: argparse.Namespace, workdir: str) -> dict:
    out = os.path.join(workdir, f"{mode}.pt")
    command = [sys.executable, __file__, "--child", mode, "--out", out, "--size", str(args.size),
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--repeats", str(args.repeats),
               "--seed", str(args.seed)]
    command += ["--device", args.device] if args.device else []
    command += ["--dtype", args.dtype] if args.dtype else []
    subprocess.run(command, check=True)
    return torch.load(out, weights_only=True)


def main() -> None:
    args = parse_args()
    if args.child:
        run_child(args)
        return
    if args.size % 8:
        raise SystemExit(f"--size must be a multiple of 8, got {args.size}")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for mode in args.modes:
            results[mode] = run_mode(mode, args, workdir)
            r = results[mode]
            print(f"{mode:16s} {args.size}px  median {statistics.median(r['times']):8.3f} s  "
                  f"peak {r['peak'] / 2 ** 20:9.1f} MiB  ({r['device']}, {r['dtype']})", flush=True)
    for ours, theirs in (("ours", "diffusers"), ("ours-tiled", "diffusers-tiled"), ("ours", "ours-tiled")):
        if ours in results and theirs in results:
            diff = (results[ours]["image"] - results[theirs]["image"]).abs()
            print(f"{ours} vs {theirs}: max |diff| {diff.max().item():.3g}, mean |diff| {diff.mean().item():.3g}")
    print(json.dumps({m: {"median_s": statistics.median(r["times"]), "peak_mib": r["peak"] / 2 ** 20}
                      for m, r in results.items()}))


if __name__ == "__main__":
    main()
