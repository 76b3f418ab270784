"""FLOPs of one UNet forward pass, the machine's measured fp32 matmul peak, and the fraction of
that peak our UNet achieves.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes
only, nothing computed; a multiply-add counts 2). The peak is the best of several timed
``torch.mm`` of two ``--mm-size`` square fp32 matrices, with the same thread count as the UNet.

    OMP_NUM_THREADS=1 python benchmarks/unet_flops.py --models sd1 sd2 --latent 64 --batch 2 --time
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CONFIGS, perturb_zero_parameters  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["sd1", "sd2"])
    parser.add_argument("--latent", type=int, default=64, help="latent side length (64 = 512 px)")
    parser.add_argument("--batch", type=int, default=2, help="2 = one classifier-free-guidance step")
    parser.add_argument("--time", action="store_true", help="also time our UNet (fp32, CPU) for the fraction")
    parser.add_argument("--repeats", type=int, default=2, help="timed UNet passes per model (after one untimed)")
    parser.add_argument("--mm-size", type=int, default=2048)
    return parser.parse_args()


def unet_inputs(config, batch: int, latent: int, device: str) -> Tuple[torch.Tensor, ...]:
    params = config.model.params.unet_config.params
    x = torch.randn(batch, params.in_channels, latent, latent, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    context = torch.randn(batch, 77, params.context_dim, device=device)
    return x, t, context


def count_flops(name: str, batch: int, latent: int) -> Tuple[int, Dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of one forward pass, counted on the meta device."""
    config = OmegaConf.load(CONFIGS[name])
    with torch.device("meta"):
        unet = instantiate_from_config(config.model.params.unet_config).eval()
    x, t, context = unet_inputs(config, batch, latent, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, context=context)
    per_op = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), per_op


def matmul_peak(n: int, repeats: int = 7) -> float:
    """Best FLOP/s of ``torch.mm`` on two n x n fp32 matrices (2 n^3 FLOPs per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(seconds)


def time_unet(name: str, batch: int, latent: int, repeats: int) -> float:
    """Median wall-clock seconds of one forward pass of our full-size UNet (random weights)."""
    config = OmegaConf.load(CONFIGS[name])
    torch.manual_seed(0)
    unet = instantiate_from_config(config.model.params.unet_config).eval()
    perturb_zero_parameters(unet)
    x, t, context = unet_inputs(config, batch, latent, "cpu")
    seconds = []
    with torch.inference_mode():
        unet(x, t, context=context)
        for _ in range(repeats):
            start = time.perf_counter()
            unet(x, t, context=context)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    args = parse_args()
    peak = matmul_peak(args.mm_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 torch.mm {args.mm_size}^2 peak "
          f"{peak / 1e9:.1f} GFLOP/s")
    for name in args.models:
        total, per_op = count_flops(name, args.batch, args.latent)
        shares = ", ".join(f"{op} {100 * n / total:.1f}%" for op, n in sorted(per_op.items(), key=lambda kv: -kv[1]))
        print(f"{name}: latent {args.latent}, batch {args.batch}: {total / 1e9:.1f} GFLOPs per UNet call ({shares})")
        if args.time:
            seconds = time_unet(name, args.batch, args.latent, args.repeats)
            achieved = total / seconds
            print(f"{name}: our UNet median {seconds:.2f} s per call -> {achieved / 1e9:.1f} GFLOP/s, "
                  f"{100 * achieved / peak:.0f}% of the measured matmul peak", flush=True)
        # the matmul peak is re-measured after each model, since the machine's load drifts
        peak_after = matmul_peak(args.mm_size)
        print(f"   (matmul peak re-measured: {peak_after / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
