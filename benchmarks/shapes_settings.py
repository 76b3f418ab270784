"""The shapes adherence table (every sampling task of scripts/evaluate_shapes.py) under several
precision / DeepCache / token merging settings side by side, in one run: fp32 (``--precision full``),
bf16 autocast (``--precision autocast`` on a CPU with native bfloat16, forced with LDM_CPU_BF16=1),
fp32 with ``--cache-interval N`` (and ``--cache-depth D``), and bf16 autocast with ``--token-merging
0.N``. Prints each number per setting, its largest difference to the first setting in points, and
the seconds each task took.

    python benchmarks/shapes_settings.py [--tasks txt2img inpaint ...] [--settings fp32 bf16 cache3 tome5]
                                         [--single-repeats 1] [--two-count 8] [--count 16]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "scripts")]

import evaluate_shapes  # noqa: E402

TASKS = ("txt2img", "relations", "inpaint", "depth", "upscale", "class", "pixel")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16", "cache3"],
                        help="fp32, bf16, cacheN / cacheNdD (fp32 with --cache-interval N, --cache-depth D), "
                             "or tomeN (bf16 with --token-merging 0.N)")
    parser.add_argument("--single-repeats", type=int, default=1)
    parser.add_argument("--two-count", type=int, default=8)
    parser.add_argument("--count", type=int, default=16, help="images for inpaint/depth/upscale/pixel")
    parser.add_argument("--steps", type=int, default=20)
    return parser.parse_args()


def evaluate(task: str, setting: str, opt: argparse.Namespace):
    """(report numbers, seconds) of one task under one setting."""
    argv = [task, "--single-repeats", str(opt.single_repeats), "--two-count", str(opt.two_count),
            "--count", str(opt.count), "--steps", str(opt.steps)]
    bf16 = setting == "bf16" or setting.startswith("tome")
    os.environ["LDM_CPU_BF16"] = "1" if bf16 else "0"
    argv += ["--precision", "autocast" if bf16 else "full"]
    if setting.startswith("tome"):
        argv += ["--token-merging", f"0.{setting[len('tome'):]}"]
    if setting.startswith("cache"):
        interval, _, depth = setting[len("cache"):].partition("d")
        argv += ["--cache-interval", interval, "--cache-depth", depth or "1"]
    args = evaluate_shapes.build_parser().parse_args(argv)
    start = time.perf_counter()
    report = evaluate_shapes.run(args)
    return report.numbers, time.perf_counter() - start


def print_task(task: str, results: Dict[str, tuple], settings: List[str]) -> None:
    print(f"\n### {task}\n")
    print("| number | " + " | ".join(settings) + " |")
    print("|---|" + "---|" * len(settings))
    baseline = results[settings[0]][0]
    for key, value in baseline.items():
        cells = [results[s][0].get(key, float("nan")) for s in settings]
        percent = all(0.0 <= c <= 1.0 for c in cells)
        print(f"| {key} | " + " | ".join(f"{100 * c:.1f}%" if percent else f"{c:.3g}" for c in cells) + " |")
    for setting in settings[1:]:
        gaps = [100 * abs(results[setting][0][k] - v) for k, v in baseline.items()
                if 0.0 <= v <= 1.0 and k in results[setting][0]]
        print(f"largest gap {setting} vs {settings[0]}: {max(gaps, default=0.0):.1f} points")
    print("seconds: " + ", ".join(f"{s} {results[s][1]:.0f}" for s in settings))


def main() -> None:
    opt = parse_args()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for task in opt.tasks:
        results = {setting: evaluate(task, setting, opt) for setting in opt.settings}
        print_task(task, results, opt.settings)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
