"""bf16 autocast against float32 for the full-size UNet on a CPU: the output difference of one
denoising step (seeded random weights, zero-initialised layers perturbed) and the time of one
forward pass each, alternating. ``--precision autocast`` samples this way on a CPU with native
bfloat16 (AMX-BF16 / AVX512-BF16), attention scores and softmax in float32.

    python benchmarks/bf16_autocast.py [--model sd1] [--latent 64] [--batch 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CONFIGS, alternate, median_times, random_unet, seeded_unet_inputs  # noqa: E402
from ldm.inference.precision import cpu_has_native_bf16, precision_scope  # noqa: E402

CPU = torch.device("cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="sd1")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--timestep", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="timed forward passes per precision")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    """Build, compare, time (each forward in a bf16 autocast scope held throughout, fp32 with it
    switched off)."""
    args = parse_args()
    unet, config = random_unet(args.model, args.seed)
    x, t, context = seeded_unet_inputs(config, args.batch, args.latent, args.timestep, args.seed)

    def forward(dtype):
        """One step; the bf16 weights autocast made stay cached in the outer scope, as while sampling."""
        with torch.autocast("cpu", enabled=dtype is not None, dtype=torch.bfloat16):
            return unet(x, t, context=context)

    print(f"{args.model} UNet, latent {args.latent}, batch {args.batch}, t {args.timestep}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), native bf16: {cpu_has_native_bf16()}")
    # no_grad as the pipeline samples: under inference_mode autocast casts the weights again at every call.
    with torch.no_grad(), precision_scope(CPU, torch.bfloat16):
        full, half = forward(None), forward(torch.bfloat16)
        times = alternate({"fp32": lambda: forward(None), "bf16": lambda: forward(torch.bfloat16)},
                          args.repeats, CPU)
    half = half.float()
    error = (half - full).flatten()
    cosine = torch.nn.functional.cosine_similarity(half.flatten(), full.flatten(), dim=0)
    print(f"output: max |y| {full.abs().max():.3f}, rms y {full.pow(2).mean().sqrt():.4f}; bf16 - fp32: "
          f"max {error.abs().max():.4f}, rms {error.pow(2).mean().sqrt():.4f}, relative rms "
          f"{error.norm() / full.norm():.4f}, cosine {cosine:.6f}")
    (wall32, cpu32), (wall16, cpu16) = median_times(times["fp32"]), median_times(times["bf16"])
    print(f"median seconds per forward: fp32 {wall32:.2f} wall / {cpu32:.2f} cpu, bf16 {wall16:.2f} wall / "
          f"{cpu16:.2f} cpu; bf16 / fp32: {wall16 / wall32:.3f} wall, {cpu16 / cpu32:.3f} cpu")


if __name__ == "__main__":
    main()
