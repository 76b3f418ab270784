"""Prompt adherence of every sampler on the shipped shapes model (checkpoints/shapes-txt2img.*,
a v-prediction model on the cosine schedule), read by the shapes detector.

For each sampler: every single-object prompt (24 colour/shape pairs, ``--repeats`` times) and
``--two-object`` seen two-object prompts, image k seeded ``--seed + k`` whatever its batch,
generated through ``ldm.load("txt2img")`` as users run it. Printed per sampler: model evaluations
per image (Heun takes two per step), colour and shape accuracy on single objects (the largest
object has the prompted colour / also the prompted shape), the same per named object on two-object
prompts, and seconds. A sampler that has lost the image (as Heun did before issue 18, with its
sigma schedule starting at sigma ~ 2e4) scores near 0 on both.

    python benchmarks/sampler_adherence.py [--steps 20] [--scale 5] [--repeats 2] [--two-object 24]
                                          [--samplers heun heun_karras ...] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ldm  # noqa: E402
from ldm.evaluation import generation  # noqa: E402
from ldm.evaluation.adherence import PromptCase, score_image, single_object_cases, two_object_cases  # noqa: E402
from ldm.models.diffusion.samplers import SAMPLERS  # noqa: E402


class CountingModel:
    """Counts ``apply_model`` calls of a loaded model (one call evaluates the whole batch)."""

    def __init__(self, model):
        self.apply_model, self.calls = model.apply_model, 0
        model.apply_model = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.apply_model(*args, **kwargs)


def adherence(pipe, counter: CountingModel, sampler: str, cases: List[PromptCase], steps: int,
              scale: float, seed: int, batch_size: int) -> Dict[str, float]:
    """Accuracies of one sampler on ``cases``, its model evaluations per image and seconds."""
    counter.calls = 0
    start = time.perf_counter()
    images = generation.txt2img(pipe, [case.text for case in cases], seed=seed, steps=steps,
                                scale=scale, batch_size=batch_size, sampler=sampler)
    seconds = time.perf_counter() - start
    batches = -(-len(cases) // batch_size)
    scores = [score_image(case, image) for case, image in zip(cases, images)]
    row = {"evaluations": counter.calls / batches, "seconds": seconds}
    for kind in ("single", "two"):
        picked = [s for case, s in zip(cases, scores) if case.kind == kind]
        if picked:
            row[f"{kind}/colour"] = float(np.mean([s.colour for s in picked]))
            row[f"{kind}/shape"] = float(np.mean([s.shape for s in picked]))
    return row


def format_rows(rows: Dict[str, Dict[str, float]], counts: Dict[str, int]) -> str:
    columns = [key for key in ("single/colour", "single/shape", "two/colour", "two/shape")
               if any(key in row for row in rows.values())]
    header = ["sampler", "evals/image"] + [f"{key} (n={counts[key.split('/')[0]]})"
                                           for key in columns] + ["seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        cells = [name, f"{row['evaluations']:.0f}"] + [f"{100 * row[key]:.1f}%" for key in columns]
        lines.append("| " + " | ".join(cells + [f"{row['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2, help="times each single-object prompt")
    parser.add_argument("--two-object", type=int, default=24, help="seen two-object prompts")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    cases = single_object_cases(args.repeats)
    if args.two_object:
        cases += two_object_cases(args.two_object, held_out=False, seed=args.seed)
    counts = {"single": sum(c.kind == "single" for c in cases),
              "two": sum(c.kind == "two" for c in cases)}
    pipe = ldm.load("txt2img", device=args.device)
    counter = CountingModel(pipe.model)
    print(f"shipped txt2img model, {args.steps} steps, scale {args.scale}, seeds {args.seed}.."
          f"{args.seed + len(cases) - 1}", flush=True)
    rows = {}
    for name in args.samplers:
        rows[name] = adherence(pipe, counter, name, cases, args.steps, args.scale, args.seed,
                               args.batch_size)
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    print(format_rows(rows, counts))


if __name__ == "__main__":
    main()
