"""Colour loss guidance (``--guide-color``) on the shipped shapes model, read by the shapes detector.

"a red circle", ``--seeds`` seeds, made without guidance and with ``--guide-color 40,85,220`` (blue) at
each ``--scales`` value, seed for seed, through ``ldm.load("txt2img")`` as users run it. An image's
object pixels are the detector's foreground (saturated, not dark: ``ldm.evaluation.detector``); their
hue is averaged on the circle. Printed per scale: the fraction of seeds whose object hue came closer to
the target's hue (an image that lost its object counts as not moved), the mean object hue without and
with guidance, how often the detector still reads a circle (largest object) with guidance, and how
often the largest foreground region, whatever its colours, has a circle's shape (the detector splits an
object into one part per palette colour, so a half-recoloured circle fails the first reading only), and
the mean, over seeds, of how many degrees the object hue came closer to the target's (seed for seed; seeds
with no object pixels before or after are left out of the mean and counted as not moved).

    python benchmarks/guidance_color.py [--seeds 24] [--steps 20] [--scales 50 100 200] [--device cpu]
        [--region image|object] [--space rgb|hue] [--max-step X]
"""
from __future__ import annotations

import argparse
import colorsys
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ldm  # noqa: E402
from ldm.evaluation.detector import (  # noqa: E402
    SATURATION_MIN,
    VALUE_MIN,
    as_unit_rgb,
    classify_shape,
    connected_components,
    detect_objects,
    hsv,
    shape_features,
)
from ldm.inference.guidance import GUIDE_COLOR_SPACES, GUIDE_REGIONS  # noqa: E402

PROMPT = "a red circle"
BLUE = (40, 85, 220)


def object_hue(image: np.ndarray) -> Optional[float]:
    """Circular mean hue (degrees) of the detector's foreground pixels; None when there are none."""
    hue, saturation, value = hsv(as_unit_rgb(image))
    angles = np.deg2rad(hue[(saturation > SATURATION_MIN) & (value > VALUE_MIN)])
    if angles.size == 0:
        return None
    return float(np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360)


def hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def keeps_circle(image: np.ndarray) -> bool:
    objects = detect_objects(image)
    return bool(objects) and objects[0].shape == "circle"


def round_foreground(image: np.ndarray) -> bool:
    """Whether the largest connected region of foreground pixels (any colour) is classified a circle."""
    _, saturation, value = hsv(as_unit_rgb(image))
    labels = connected_components((saturation > SATURATION_MIN) & (value > VALUE_MIN))
    if labels.max() == 0:
        return False
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return classify_shape(*shape_features(labels == largest)) == "circle"


def circular_mean(hues: List[float]) -> float:
    angles = np.deg2rad(hues)
    return float(np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scales", type=float, nargs="+", default=[50.0, 100.0, 200.0])
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--region", default="image", choices=GUIDE_REGIONS, help="--guide-region")
    parser.add_argument("--space", default="rgb", choices=GUIDE_COLOR_SPACES, help="--guide-color-space")
    parser.add_argument("--max-step", type=float, default=None, help="--guide-max-step (default: no cap)")
    args = parser.parse_args()

    pipe = ldm.load("txt2img", device=args.device)
    target = 360.0 * colorsys.rgb_to_hsv(*(c / 255 for c in BLUE))[0]
    common = dict(steps=args.steps, seed=args.seed, n=args.seeds)
    plain = [np.asarray(image) for image in pipe(PROMPT, **common)]
    before = [object_hue(image) for image in plain]
    known = [h for h in before if h is not None]
    print(f"{PROMPT!r}, {args.seeds} seeds, {args.steps} steps, default sampler and CFG scale; target "
          f"{','.join(map(str, BLUE))} (hue {target:.0f} deg), "
          f"--guide-region {args.region} --guide-color-space {args.space} --guide-max-step {args.max_step}")
    print(f"without guidance: mean object hue {circular_mean(known):.0f} deg, circle read in "
          f"{np.mean([keeps_circle(i) for i in plain]):.0%}, round foreground in "
          f"{np.mean([round_foreground(i) for i in plain]):.0%}")
    print(f"{'guide scale':>11} | {'hue moved toward blue':>21} | {'hue before':>10} | {'hue after':>9} | "
          f"{'mean shift toward blue':>22} | {'circle kept':>11} | {'round foreground':>16} | {'seconds':>7}")
    for scale in args.scales:
        start = time.perf_counter()
        guided = [np.asarray(image) for image in pipe(PROMPT, guide_color=BLUE, guide_scale=scale,
                                                     guide_region=args.region, guide_color_space=args.space,
                                                     guide_max_step=args.max_step, **common)]
        seconds = time.perf_counter() - start
        after = [object_hue(image) for image in guided]
        moved = [b is not None and a is not None and hue_distance(a, target) < hue_distance(b, target)
                 for b, a in zip(before, after)]
        shifts = [hue_distance(b, target) - hue_distance(a, target) for b, a in zip(before, after)
                  if b is not None and a is not None]
        after_known = [h for h in after if h is not None]
        mean_after = f"{circular_mean(after_known):.0f}" if after_known else "-"
        mean_shift = f"{np.mean(shifts):.1f} deg" if shifts else "-"
        print(f"{scale:>11g} | {f'{np.mean(moved):.0%} ({sum(moved)}/{len(moved)})':>21} | "
              f"{circular_mean(known):>10.0f} | {mean_after:>9} | {mean_shift:>22} | "
              f"{np.mean([keeps_circle(i) for i in guided]):>11.0%} | "
              f"{np.mean([round_foreground(i) for i in guided]):>16.0%} | {seconds:>7.0f}")


if __name__ == "__main__":
    main()
