"""DeepCache (``--cache-interval N``) against the plain UNet, timed side by side.

``--model shapes``: the shipped shapes txt2img model through ``ldm.load`` as users run it
(``--precision full``), ``--n`` images of one prompt, ``--steps`` steps of ``--sampler``; seconds
of the whole call and of the UNet calls alone, and the mean absolute pixel difference.
``--model sd1`` / ``sd2``: the full-size UNet with seeded random weights over ``--steps``
falling timesteps (a sampling run's UNet calls, the input fixed), batch 2 as under guidance;
seconds per run and the relative difference of the last output to the plain UNet's.

    python benchmarks/deepcache.py --model shapes [--intervals 2 3] [--depths 0 1] [--steps 20] [--n 8]
    python benchmarks/deepcache.py --model sd1 --latent 32 --steps 6 [--intervals 3] [--depths 0 1] [--repeats 1]
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CONFIGS, ForwardClock, alternate, median_times, random_unet  # noqa: E402
from ldm.modules.diffusionmodules.deepcache import deep_cache  # noqa: E402

CPU = torch.device("cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["shapes", *sorted(CONFIGS)], default="shapes")
    parser.add_argument("--intervals", nargs="+", type=int, default=[3])
    parser.add_argument("--depths", nargs="+", type=int, default=[1], help="--cache-depth values")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m", help="shapes: the sampler (default: dpmpp_2m)")
    parser.add_argument("--n", type=int, default=8, help="shapes: images per call")
    parser.add_argument("--latent", type=int, default=32, help="sd: latent side (64 = 512 px)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def settings(args: argparse.Namespace) -> List[Tuple[int, int]]:
    """Every (interval, depth) pair asked for."""
    return [(interval, depth) for interval in args.intervals for depth in args.depths]


def report(times: Dict[str, list], baseline: str = "off") -> None:
    wall0, cpu0 = median_times(times[baseline])
    for name, samples in times.items():
        wall, cpu = median_times(samples)
        print(f"  {name:>10}: {wall:8.2f} s wall {cpu:8.2f} s cpu   x{wall / wall0:.3f} wall  x{cpu / cpu0:.3f} cpu")


def bench_shapes(args: argparse.Namespace) -> None:
    import ldm

    pipe = ldm.load("txt2img", precision="full", device="cpu")
    clock = ForwardClock([pipe.unet])
    runs: Dict[str, Callable[[], list]] = {"off": lambda: pipe("a red circle", n=args.n, steps=args.steps,
                                                                 sampler=args.sampler, seed=args.seed)}
    for interval, depth in settings(args):
        runs[f"N={interval},D={depth}"] = functools.partial(
            pipe, "a red circle", n=args.n, steps=args.steps, sampler=args.sampler, seed=args.seed,
            cache_interval=interval, cache_depth=depth)
    unet_seconds = {name: [] for name in runs}
    images = {}

    def timed_unet(name: str, run: Callable[[], list]) -> Callable[[], None]:
        def call() -> None:
            clock.seconds = 0.0
            images[name] = run()
            unet_seconds[name].append(clock.seconds)
        return call

    times = alternate({name: timed_unet(name, run) for name, run in runs.items()}, args.repeats, CPU)
    print(f"shapes txt2img, {args.n} images, {args.steps} steps of {args.sampler}, fp32, "
          f"{torch.get_num_threads()} thread(s); medians of {args.repeats}; whole call:")
    report(times)
    print("  UNet forward CPU seconds (median): " + ", ".join(
        f"{name} {np.median(s):.2f} (x{np.median(s) / np.median(unet_seconds['off']):.3f})"
        for name, s in unet_seconds.items()))
    plain = np.stack([np.asarray(image, dtype=float) for image in images["off"]])
    for name in list(runs)[1:]:
        other = np.stack([np.asarray(image, dtype=float) for image in images[name]])
        print(f"  {name}: mean |pixel difference| to off {np.abs(other - plain).mean():.2f} / 255")


def bench_sd(args: argparse.Namespace) -> None:
    unet, config = random_unet(args.model, args.seed)
    context_dim = config.model.params.unet_config.params.context_dim
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(2, 4, args.latent, args.latent, generator=generator)
    context = torch.randn(2, 77, context_dim, generator=generator)
    timesteps = np.linspace(999, 0, args.steps).round().astype(int)
    outputs = {}

    def run(name: str, interval, depth=1) -> Callable[[], None]:
        def call() -> None:
            with deep_cache(unet, interval, depth):
                for t in timesteps:
                    out = unet(x, torch.full((2,), int(t)), context=context)
            outputs[name] = out
        return call

    runs = {"off": run("off", None), **{f"N={k},D={d}": run(f"N={k},D={d}", k, d) for k, d in settings(args)}}
    with torch.inference_mode():
        times = alternate(runs, args.repeats, CPU)
    print(f"{args.model} UNet (random weights), latent {args.latent}, batch 2, {args.steps} steps, fp32, "
          f"{torch.get_num_threads()} thread(s); medians of {args.repeats}; seconds per run:")
    report(times)
    for name in list(runs)[1:]:
        error = (outputs[name] - outputs["off"]).norm() / outputs["off"].norm()
        print(f"  {name}: relative difference of the last step's output to off {error:.4f}")


def main() -> None:
    args = parse_args()
    (bench_shapes if args.model == "shapes" else bench_sd)(args)


if __name__ == "__main__":
    main()
