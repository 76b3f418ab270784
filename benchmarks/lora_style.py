"""Does a style LoRA show, and does the model still follow the prompt? Measured on the shipped shapes
text-to-image model (checkpoints/shapes-txt2img.*) with a LoRA trained by configs/shapes/lora-style.yaml
(the "dark" style: near-black backgrounds).

Every single-object prompt (24 colour/shape pairs, ``--repeats`` times) and ``--two-object`` seen
two-object prompts, image k seeded ``--seed + k``, generated through ``ldm.load("txt2img")`` without the
LoRA, with it at weight 0, and at each ``--weights`` value. Printed per row: the fraction of images that
show the dark style (``ldm.evaluation.style``: mean HSV value of the background below 0.08), the mean
background value, and colour and shape accuracy read by the shapes detector (single objects: the largest
object; two objects: each named object). Also whether weight 0 gives the base model's images bit for bit.

    python benchmarks/lora_style.py --lora logs/<run>/lora/shapes_dark.safetensors [--repeats 2]
                                    [--two-object 24] [--steps 20] [--scale 5] [--weights 0.5 1] [--device cpu]
                                    [--vae checkpoints/shapes-autoencoder-kl-f4-dark.safetensors]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ldm  # noqa: E402
from ldm.evaluation import generation  # noqa: E402
from ldm.evaluation.adherence import (  # noqa: E402
    PromptCase,
    mean_accuracies,
    score_image,
    single_object_cases,
    two_object_cases,
)
from ldm.evaluation.style import background_value, dark_style_fraction  # noqa: E402
from ldm.modules.lora import apply_lora  # noqa: E402

COLUMNS = ("dark style", "background value", "single/colour", "single/shape", "two/colour", "two/shape")


def measure(cases: Sequence[PromptCase], images: np.ndarray) -> Dict[str, float]:
    """The style and adherence figures of one set of images (one per case)."""
    scores = [score_image(case, image) for case, image in zip(cases, images)]
    row = {"dark style": dark_style_fraction(images),
           "background value": float(np.mean([background_value(image) for image in images]))}
    for kind in ("single", "two"):
        picked = [s for case, s in zip(cases, scores) if case.kind == kind]
        if picked:
            row.update({f"{kind}/{name}": value for name, value in mean_accuracies(picked).items()
                        if name in ("colour", "shape")})
    return row


def format_rows(rows: Dict[str, Dict[str, float]]) -> str:
    columns = [c for c in COLUMNS if any(c in row for row in rows.values())]
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if c == "background value" else f"{100 * row[c]:.1f}%" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", required=True, help="the LoRA file (.safetensors)")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0], help="LoRA weights to measure")
    parser.add_argument("--repeats", type=int, default=2, help="times each single-object prompt")
    parser.add_argument("--two-object", type=int, default=24, help="seen two-object prompts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--sampler", default="dpm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vae", default=None,
                        help="an autoencoder file for the model (--vae), e.g. "
                             "checkpoints/shapes-autoencoder-kl-f4-dark.safetensors")
    args = parser.parse_args(argv)

    cases = single_object_cases(args.repeats) + two_object_cases(args.two_object, held_out=False, seed=args.seed)
    pipe = ldm.load("txt2img", device=args.device, vae=args.vae)

    def generate() -> np.ndarray:
        return generation.txt2img(pipe, [case.text for case in cases], seed=args.seed, steps=args.steps,
                                  scale=args.scale, batch_size=args.batch_size, sampler=args.sampler)

    print(f"shipped txt2img model, VAE {args.vae or 'its own'}, LoRA {args.lora}, {len(cases)} prompts, "
          f"{args.steps} {args.sampler} steps, "
          f"scale {args.scale}, seeds {args.seed}..{args.seed + len(cases) - 1}", flush=True)
    base = generate()
    rows = {"base (no LoRA)": measure(cases, base)}
    handle = apply_lora(pipe.model, args.lora, weight=0.0)
    same_at_zero = np.array_equal(generate(), base)
    for weight in args.weights:
        handle.weight = weight
        rows[f"LoRA weight {weight:g}"] = measure(cases, generate())
        print(f"weight {weight:g}: {rows[f'LoRA weight {weight:g}']}", file=sys.stderr, flush=True)
    handle.remove()
    same_removed = np.array_equal(generate(), base)
    print(format_rows(rows))
    print(f"LoRA at weight 0 gives the base model's images bit for bit: {'yes' if same_at_zero else 'NO'}; "
          f"after remove(): {'yes' if same_removed else 'NO'}")


if __name__ == "__main__":
    main()
