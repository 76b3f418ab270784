"""Latency of our UNetModel against diffusers' UNet2DConditionModel with the same weights.

Builds the full-size SD 1.x and/or SD 2.x UNet from the original configs, converts its state
dict with diffusers' own single-file conversion, shares the weight tensors with a diffusers
UNet2DConditionModel, checks that both give the same output, then times one forward pass of each,
alternating, and prints the medians and the ratio ours / diffusers (< 1: ours is faster).

    python benchmarks/unet_latency.py --models sd1 sd2 --latent 32 --batch 2 --repeats 5

fp32 on CPU; on CUDA the default dtype is fp16. Needs ``pip install -e ".[bench]"``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CONFIGS, DTYPES, alternate, diffusers_unet, median_times, random_unet, resolve_dtype  # noqa: E402
from ldm.inference.optimizations import compile_for_inference  # noqa: E402
from ldm.modules import attention  # noqa: E402
from ldm.util import pick_device  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=["sd1", "sd2"])
    parser.add_argument("--latent", nargs="+", type=int, default=[32], help="latent side lengths (64 = 512 px)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per model")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: best available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights and inputs dtype (default: fp16 on CUDA, else fp32)")
    parser.add_argument("--attn-precision", choices=["fp32", "fp16"], default=None,
                        help="our attention precision for half dtypes (default: ATTN_PRECISION or fp32)")
    parser.add_argument("--compile", choices=["none", "ours", "both"], default="none",
                        help="torch.compile our UNet (as --compile in the scripts: frozen weights on CPU) "
                             "or both UNets before timing (default: none, eager)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_pair(name: str, device: torch.device, dtype: torch.dtype, precision=None):
    """Our UNet from the original config and a diffusers UNet sharing its weight tensors."""
    ours, config = random_unet(name)
    ours = ours.to(device=device, dtype=dtype)
    if precision is not None:
        attention.set_attention_precision(ours, precision)
    theirs = diffusers_unet(ours, config)
    return ours, theirs, config.model.params.unet_config.params.context_dim


def bench_one(name: str, latent: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(args.seed)
    ours, theirs, context_dim = build_pair(name, device, dtype, args.attn_precision)
    x = torch.randn(args.batch, 4, latent, latent, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    context = torch.randn(args.batch, 77, context_dim, device=device, dtype=dtype)
    if args.compile in ("ours", "both"):
        ours = compile_for_inference(ours)
    if args.compile == "both":
        theirs = compile_for_inference(theirs)

    def run_ours():
        return ours(x, t, context=context)

    def run_theirs():
        return theirs(x, t, encoder_hidden_states=context).sample

    with torch.inference_mode():
        a, b = run_ours(), run_theirs()
        max_diff = (a.float() - b.float()).abs().max().item()
        scale = b.float().abs().max().item()
        times = alternate({"ours": run_ours, "diffusers": run_theirs}, args.repeats, device)
    row = dict(model=name, latent=latent, max_diff=max_diff, scale=scale)
    (row["ours_wall"], row["ours_cpu"]), (row["diffusers_wall"], row["diffusers_cpu"]) = (
        median_times(times["ours"]), median_times(times["diffusers"]))
    for clock in ("wall", "cpu"):
        row[f"ratio_{clock}"] = row[f"ours_{clock}"] / row[f"diffusers_{clock}"]
    return row


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    import diffusers

    print(f"device {device}, dtype {dtype}, batch {args.batch}, repeats {args.repeats}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), diffusers {diffusers.__version__}, "
          f"our attention precision {args.attn_precision or 'ATTN_PRECISION (default fp32)'}, compiled: {args.compile}")
    print("medians of wall-clock and process CPU seconds per forward pass; ratio = ours / diffusers")
    print(f"{'model':6} {'latent':>6} {'ours wall':>10} {'diff. wall':>10} {'ratio':>6} "
          f"{'ours cpu':>9} {'diff. cpu':>9} {'ratio':>6} {'max |diff|':>11}")
    for name in args.models:
        for latent in args.latent:
            row = bench_one(name, latent, args, device, dtype)
            print(f"{row['model']:6} {row['latent']:>6} {row['ours_wall']:>10.3f} {row['diffusers_wall']:>10.3f} "
                  f"{row['ratio_wall']:>6.3f} {row['ours_cpu']:>9.3f} {row['diffusers_cpu']:>9.3f} "
                  f"{row['ratio_cpu']:>6.3f} {row['max_diff']:>11.2e}  (output max |y| {row['scale']:.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
