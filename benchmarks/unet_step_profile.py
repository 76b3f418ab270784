"""Where one SD 1.x UNet step spends its time on this CPU, at the scripts' default precision, and how
fast the attention kernel runs in bf16 against fp32.

Part 1 profiles one UNet forward (random weights from the original config, latent 64 = 512 px,
batch 2 = one classifier-free-guidance step) as the pipeline runs it: under ``--precision
autocast``, i.e. bf16 autocast with the Linear/Conv weights stored in bf16 on a CPU with native
bfloat16 (``store_autocast_weights``), fp32 elsewhere. The profiler's self time is grouped into
convolutions, attention (``scaled_dot_product_attention``), linear layers and the rest.

Part 2 times torch's ``scaled_dot_product_attention`` on the shape of the UNet's largest
self-attention (batch 2, 8 heads, 4096 tokens, head dim 40) in bf16 and fp32: if bf16 is no faster
than fp32, the attention third of the step cannot gain from bf16 on this CPU. The bf16 call keeps
float32 scores and softmax (the ``ATTN_PRECISION=fp32`` convention; torch's CPU kernel accumulates
in float32).

    OMP_NUM_THREADS=2 python benchmarks/unet_step_profile.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_seconds, random_unet, seeded_unet_inputs  # noqa: E402
from ldm.inference.precision import autocast_dtype, cpu_has_native_bf16, store_autocast_weights  # noqa: E402

GROUPS = {"convolution": ("convolution",), "attention": ("scaled_dot_product", "flash_attention"),
          "linear": ("addmm", "aten::mm", "aten::bmm")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64, help="latent side length (64 = 512 px)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (medians are printed)")
    return parser.parse_args()


def group_of(op_name: str) -> str:
    for group, needles in GROUPS.items():
        if any(needle in op_name for needle in needles):
            return group
    return "other"


def unet_step_profile(latent: int, batch: int, repeats: int) -> None:
    dtype = autocast_dtype(torch.device("cpu"), "autocast", cpu_has_native_bf16())
    unet, config = random_unet("sd1")
    holder = torch.nn.Module()
    holder.model = torch.nn.Module()
    holder.model.diffusion_model = unet
    if dtype is not None:
        store_autocast_weights(holder, dtype)
    unet.eval()
    x, t, context = seeded_unet_inputs(config, batch, latent)

    def step():
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return unet(x, t, context=context)

    seconds = median_seconds(step, repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals: Dict[str, float] = {}
    for event in prof.key_averages():
        group = group_of(event.key)
        totals[group] = totals.get(group, 0.0) + event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    print(f"SD 1.x UNet, latent {latent}, batch {batch}, precision autocast -> {dtype or torch.float32}, "
          f"threads {torch.get_num_threads()}: median {seconds:.2f} s per step")
    print("| part | seconds (profiled step) | share |\n|---|---|---|")
    for group in ("convolution", "attention", "linear", "other"):
        print(f"| {group} | {totals.get(group, 0.0):.2f} | {100 * totals.get(group, 0.0) / whole:.0f}% |")


def attention_kernel_speed(repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 4096, 40, generator=generator) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v)
    print("\nscaled_dot_product_attention, (2, 8, 4096, 40) = the largest self-attention of the SD 1.x UNet at 512 px")
    print("| inputs | seconds (median) | max difference to fp32 |\n|---|---|---|")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        qd, kd, vd = (tensor.to(dtype) for tensor in (q, k, v))
        seconds = median_seconds(lambda: F.scaled_dot_product_attention(qd, kd, vd), repeats)
        error = (F.scaled_dot_product_attention(qd, kd, vd).float() - reference).abs().max().item()
        print(f"| {name} | {seconds:.3f} | {error:.1e} |")


def main() -> None:
    args = parse_args()
    unet_step_profile(args.latent, args.batch, args.repeats)
    attention_kernel_speed(args.repeats)


if __name__ == "__main__":
    main()
