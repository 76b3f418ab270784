"""Token merging (``--token-merging RATIO``) against the plain UNet on the full-size UNet, timed side by side.

The SD UNet of the original config with seeded random weights (zero-initialised layers perturbed),
one denoising step on a fixed input, batch 2 as under guidance; under bf16 autocast (what
``--precision autocast`` does on a CPU with native bfloat16; weights cast once and kept, as while
sampling) and in float32. Per precision and ratio: median seconds per forward (wall and process
CPU), the CPU seconds inside the self-attention (``attn1``) of the top-level transformer blocks
(where merging happens; merging and unmerging counted outside it), and the relative difference of
the output to ratio 0 (the plain UNet, bitwise) of the same precision.

    python benchmarks/token_merging.py [--model sd1] [--latent 64] [--batch 2] [--ratios 0 0.3 0.5]
                                       [--precisions bf16 fp32] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    CONFIGS,
    ForwardClock,
    alternate,
    median_times,
    random_unet,
    seeded_unet_inputs,
)
from ldm.inference.precision import cpu_has_native_bf16  # noqa: E402
from ldm.modules.token_merging import token_merging  # noqa: E402

CPU = torch.device("cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="sd1")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--batch", type=int, default=2, help="batch (2: one image under guidance)")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.3, 0.5],
                        help="token merging ratios; the first is the baseline (0: the plain UNet)")
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--timestep", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="timed forward passes per setting")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def top_level_self_attentions(unet: torch.nn.Module, latent: int) -> List[torch.nn.Module]:
    """The ``attn1`` layers that see ``latent * latent`` tokens, found by a plain probe forward."""
    seen: Dict[torch.nn.Module, int] = {}
    def count(block: torch.nn.Module, args: tuple) -> None:
        seen.setdefault(block, args[0].shape[1])

    hooks = [block.register_forward_pre_hook(count) for block in unet.modules() if hasattr(block, "token_merging")]
    probe = torch.zeros(1, unet.in_channels, latent, latent)
    context_dim = unet.context_dim if isinstance(unet.context_dim, int) else unet.context_dim[0]
    with torch.no_grad():
        unet(probe, torch.zeros(1), context=torch.zeros(1, 1, context_dim))
    for hook in hooks:
        hook.remove()
    return [block.attn1 for block, tokens in seen.items() if tokens == latent * latent]


def main() -> None:
    args = parse_args()
    unet, config = random_unet(args.model, args.seed)
    x, t, context = seeded_unet_inputs(config, args.batch, args.latent, args.timestep, args.seed)
    top_level = top_level_self_attentions(unet, args.latent)
    attention = ForwardClock(top_level)
    outputs: Dict[str, torch.Tensor] = {}
    attention_seconds: Dict[str, List[float]] = {}

    def forward(precision: str, ratio: float) -> Callable[[], None]:
        name = f"{precision} r={ratio:g}"
        attention_seconds[name] = []

        def call() -> None:
            attention.seconds = 0.0
            with torch.autocast("cpu", enabled=precision == "bf16", dtype=torch.bfloat16), \
                    token_merging(unet, ratio):
                outputs[name] = unet(x, t, context=context).float()
            attention_seconds[name].append(attention.seconds)
        return call

    runs = {f"{p} r={r:g}": forward(p, r) for p in args.precisions for r in args.ratios}
    print(f"{args.model} UNet (random weights), latent {args.latent}, batch {args.batch}, t {args.timestep}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} thread(s)), native bf16: {cpu_has_native_bf16()}, "
          f"{len(top_level)} top-level self-attentions; medians of {args.repeats}:")
    # no_grad as the pipeline samples (under inference_mode autocast casts the weights again at every call);
    # the outer bf16 scope keeps autocast's weight casts between calls, as while sampling.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for run in runs.values():  # warm-up: weight casts, allocator
            run()
        for name in attention_seconds:
            attention_seconds[name].clear()
        times = alternate(runs, args.repeats, CPU)
    for precision in args.precisions:
        baseline = f"{precision} r={args.ratios[0]:g}"
        wall0, cpu0 = median_times(times[baseline])
        for ratio in args.ratios:
            name = f"{precision} r={ratio:g}"
            wall, cpu = median_times(times[name])
            error = (outputs[name] - outputs[baseline]).norm() / outputs[baseline].norm()
            print(f"  {name:>10}: {wall:7.2f} s wall {cpu:7.2f} s cpu  x{wall / wall0:.3f} wall x{cpu / cpu0:.3f} cpu;"
                  f" top-level attn1 {statistics.median(attention_seconds[name]):6.2f} s cpu;"
                  f" relative difference to {baseline} {error:.4f}")


if __name__ == "__main__":
    main()
