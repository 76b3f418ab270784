"""Editing by DDIM inversion on the shipped shapes model (checkpoints/shapes-txt2img.*), measured
against the ground truth the shapes world renders.

Cases: every (colour, shape) of the shapes world rendered as one medium object (``scene_for``,
case k seeded k), each edited to two other colours (the palette colour ``+1`` and ``+3`` places on:
"a red circle" -> "an orange circle" and "a green circle", ...), shape kept: 48 cases. Each edit goes
through ``ldm.load("edit")`` as ``scripts/edit.py`` runs it. Scored per case:

- mask IoU: the edited image's foreground (the detector's saturation/value test) against the
  source render's object mask (coverage > 0.5); kept when IoU >= 0.8;
- colour: the detector's largest object has the target colour.

Printed: the rate of each, of both together, the mean IoU, and the cases that failed.

``--txt2img`` measures the ceiling instead: each case's target prompt made by plain text-to-image
(``ldm.load("txt2img")``, DDIM at the same seed, ``--steps`` and ``--scale``), scored by the colour
and the shape the detector reads (the IoU means nothing there: the object is placed anew). An edit
cannot be expected to recolour a case whose target the model cannot draw.

    python benchmarks/edit_inversion.py [--keep 0.4] [--scale 5] [--steps 50] [--inversion-steps 50]
                                       [--mask-mode diffedit] [--mask-threshold 0.5] [--mask-strength 0.5]
                                       [--mask-noises 10] [--mask-dilate 0] [--mask-fill inverted]
                                       [--inversion-prompt source] [--eta 0] [--color-transfer]
                                       [--structure-scale S] [--scene-offset 0] [--cases 48 | --only 8,13,...]
                                       [--device cpu] [--txt2img]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ldm  # noqa: E402
from ldm.data.shapes import COLOURS, SHAPES, noun_phrase, render_scene, scene_for  # noqa: E402
from ldm.evaluation.detector import SATURATION_MIN, VALUE_MIN, detect_objects, hsv  # noqa: E402

IOU_KEPT = 0.8
TARGET_OFFSETS = (1, 3)  # palette places from the source colour to the target colour


def edit_cases(count: int) -> List[Tuple[str, str, str]]:
    """``(source colour, target colour, shape)`` of the first ``count`` cases."""
    names = list(COLOURS)
    cases = [(colour, names[(index + offset) % len(names)], shape)
             for offset in TARGET_OFFSETS for index, colour in enumerate(names) for shape in SHAPES]
    return cases[:count]


def foreground(image: np.ndarray) -> np.ndarray:
    """The pixels the detector counts as object (saturated and not dark)."""
    _, saturation, value = hsv(np.asarray(image, dtype=np.float32) / 255.0)
    return (saturation > SATURATION_MIN) & (value > VALUE_MIN)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    union = (first | second).sum()
    return float((first & second).sum() / union) if union else 1.0


def edit_options(args: argparse.Namespace) -> dict:
    """The keywords of ``ldm.load("edit")`` the command line sets."""
    return dict(steps=args.steps, inversion_steps=args.inversion_steps, scale=args.scale, keep=args.keep,
                mask_mode=args.mask_mode, mask_threshold=args.mask_threshold, mask_strength=args.mask_strength,
                mask_noises=args.mask_noises, mask_dilate=args.mask_dilate, mask_fill=args.mask_fill,
                inversion_prompt=args.inversion_prompt, eta=args.eta, color_transfer=args.color_transfer,
                structure_scale=args.structure_scale)


def score_cases(pipe, indices: List[int], options: dict,
                scene_offset: int = 0) -> List[Tuple[str, str, str, float, object]]:
    """``(source, target, shape, mask IoU, colour read)`` of the cases at ``indices`` edited with ``options``;
    case k's scene is drawn with seed ``k + scene_offset`` (0: the benchmark's own scenes)."""
    rows, cases = [], edit_cases(max(indices) + 1)
    for seed in indices:
        source, target, shape = cases[seed]
        render = render_scene(scene_for([(source, shape)], seed=seed + scene_offset))
        image = Image.fromarray((render.image * 255).round().astype(np.uint8))
        edited, = pipe(noun_phrase(target, shape), source_prompt=noun_phrase(source, shape), image=image,
                       seed=seed, **options)
        pixels = np.asarray(edited)
        overlap = iou(foreground(pixels), render.alphas[0] > 0.5)
        found = detect_objects(pixels)
        rows.append((source, target, shape, overlap, found[0].colour if found else None))
    return rows


def report(rows, options: dict, seconds: float) -> None:
    kept = np.array([row[3] >= IOU_KEPT for row in rows])
    recoloured = np.array([row[4] == row[1] for row in rows])
    mode = (f"mask mode diffedit (threshold {options['mask_threshold']}, strength {options['mask_strength']}, "
            f"{options['mask_noises']} noises, dilate {options['mask_dilate']}, fill {options['mask_fill']})"
            if options["mask_mode"] == "diffedit" else "mask mode none")
    if options["color_transfer"]:
        mode += ", color transfer"
    if options["structure_scale"] is not None:
        mode += f", structure scale {options['structure_scale']}"
    print(f"keep {options['keep']}, scale {options['scale']}, steps {options['steps']}, inversion steps "
          f"{options['inversion_steps']}, inversion prompt {options['inversion_prompt']}, eta {options['eta']}, "
          f"{mode}: {len(rows)} cases in {seconds:.0f} s")
    print(f"  mask kept (IoU >= {IOU_KEPT}): {kept.mean():.1%}   mean IoU {np.mean([r[3] for r in rows]):.3f}")
    print(f"  new colour read:            {recoloured.mean():.1%}")
    print(f"  both:                       {(kept & recoloured).mean():.1%}")
    for (source, target, shape, overlap, colour), ok in zip(rows, kept & recoloured):
        if not ok:
            print(f"  failed: {source} {shape} -> {target}: IoU {overlap:.2f}, colour read {colour}")


def score_targets(pipe, indices: List[int], steps: int, scale: float) -> List[Tuple[str, str, object, object]]:
    """``(target, shape, colour read, shape read)`` of the target prompts of the cases at ``indices``
    made from noise by plain text-to-image (DDIM, the case's seed)."""
    rows, cases = [], edit_cases(max(indices) + 1)
    for seed in indices:
        _, target, shape = cases[seed]
        image, = pipe(noun_phrase(target, shape), seed=seed, steps=steps, scale=scale, sampler="ddim", n=1)
        found = detect_objects(np.asarray(image))
        rows.append((target, shape, found[0].colour if found else None, found[0].shape if found else None))
    return rows


def report_targets(rows, steps: int, scale: float, seconds: float) -> None:
    colour_ok = np.array([row[2] == row[0] for row in rows])
    shape_ok = np.array([row[3] == row[1] for row in rows])
    print(f"txt2img of the target prompts (the ceiling), DDIM {steps} steps, scale {scale}: {len(rows)} cases in "
          f"{seconds:.0f} s")
    print(f"  target colour read: {colour_ok.mean():.1%}   shape read: {shape_ok.mean():.1%}")
    for (target, shape, colour, found_shape), ok in zip(rows, colour_ok & shape_ok):
        if not ok:
            print(f"  failed: {target} {shape}: read {colour} {found_shape}")


def run(args: argparse.Namespace) -> None:
    indices = [int(index) for index in args.only.split(",")] if args.only else list(range(args.cases))
    start = time.perf_counter()
    if args.txt2img:
        rows = score_targets(ldm.load("txt2img", device=args.device), indices, args.steps, args.scale)
        report_targets(rows, args.steps, args.scale, time.perf_counter() - start)
        return
    pipe = ldm.load("edit", device=args.device)
    options = edit_options(args)
    rows = score_cases(pipe, indices, options, args.scene_offset)
    if args.scene_offset:
        print(f"scenes drawn with seeds {args.scene_offset} + case")
    report(rows, options, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=float, default=None, help="default: edit.py's")
    parser.add_argument("--scale", type=float, default=None, help="default: edit.py's")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inversion-steps", type=int, default=50)
    parser.add_argument("--cases", type=int, default=48)
    parser.add_argument("--only", default=None, help="comma-separated case indices (0-47) instead of --cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta of the regeneration")
    parser.add_argument("--color-transfer", action="store_true", help="edit.py's --color-transfer")
    parser.add_argument("--scene-offset", type=int, default=0,
                        help="draw case k's scene with seed k + this: other scenes than the benchmark's own, "
                             "to check settings chosen on them")
    parser.add_argument("--structure-scale", type=float, default=None, help="default: edit.py's")
    parser.add_argument("--txt2img", action="store_true",
                        help="measure the ceiling: plain txt2img of the target prompts (same seed, steps, scale)")
    for flag in ("mask-mode", "mask-threshold", "mask-strength", "mask-noises", "mask-dilate", "mask-fill",
                 "inversion-prompt"):
        parser.add_argument(f"--{flag}", type=str if flag in ("mask-mode", "mask-fill", "inversion-prompt") else float,
                            default=None, help="default: edit.py's")
    args = parser.parse_args()
    from ldm.inference.parsers import default_options
    defaults = vars(default_options("edit"))
    for name in ("keep", "scale", "mask_mode", "mask_threshold", "mask_strength", "mask_noises", "mask_dilate",
                 "mask_fill", "inversion_prompt"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    args.mask_noises, args.mask_dilate = int(args.mask_noises), int(args.mask_dilate)
    run(args)


if __name__ == "__main__":
    main()
