"""Colour loss guidance (``--guide-color``) on the shipped shapes model, read seed for seed on the object.

"a red circle" (or ``--prompt``, which must ask for one circle), ``--seeds`` seeds, made without guidance
and with ``--guide-color 40,85,220`` (blue) at each ``--scales`` value, through ``ldm.load("txt2img")`` as
users run it. The object is located in the UNGUIDED image of each seed (the detector's largest object, its
pixel mask); the guided image of the same seed is read there, so a background that turns blue is not taken
for the object:

- object hue: circular mean hue over the unguided object's pixels (weighted by saturation, so near-grey
  pixels, whose hue is noise, count little), unguided and guided; its shift toward blue is how many
  degrees closer to the target's hue it came; a seed "moved" when the shift is >= ``MIN_SHIFT`` degrees;
- background: the pixels outside the object's mask grown by one pixel (no edge pixels); its mean
  saturation change, the fraction of it the detector calls foreground (saturated) after guidance, and its
  hue (weighted likewise), so tinting shows on its own;
- object IoU: the largest IoU of an object the detector finds in the guided image with the unguided
  object's mask (a low one says the hue above was read partly on what replaced the object);
- circle kept: the detector on the guided image reads a circle whose mask overlaps the unguided object's
  mask with IoU >= ``MIN_IOU`` (not just some circle somewhere); "round region": the same test on the
  connected region of saturated pixels, any colour, that overlaps the object most (the detector splits an
  object into one part per palette colour, so a half-recoloured circle fails only the first reading).

Seeds without an unguided object count as not moved and not kept. Printed: one line per seed and scale,
then per scale the seeds moved, the mean shift, the mean object IoU, circle kept, moved and kept, and the
background change.

    python benchmarks/guidance_color.py [--seeds 24] [--steps 20] [--scales 50 100 200] [--device cpu]
        [--region image|object] [--space rgb|hue|latent] [--max-step X] [--keep-layout] [--prompt "a circle"]
"""
from __future__ import annotations

import argparse
import colorsys
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

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
    detect_object_masks,
    hsv,
    shape_features,
)
from ldm.inference.guidance import GUIDE_COLOR_SPACES, GUIDE_REGIONS  # noqa: E402

DEFAULT_PROMPT = "a red circle"
BLUE = (40, 85, 220)
TARGET_HUE = 360.0 * colorsys.rgb_to_hsv(*(c / 255 for c in BLUE))[0]
MIN_SHIFT = 10.0   # degrees toward the target for a seed to count as moved
MIN_IOU = 0.5      # overlap of the guided circle with the unguided object


@dataclass(frozen=True)
class SeedReading:
    """One seed's guided image read on its unguided object (hues in degrees, None where undefined)."""
    has_object: bool
    hue_before: Optional[float] = None
    hue_after: Optional[float] = None
    shift: Optional[float] = None
    object_saturation_change: float = 0.0
    background_hue_after: Optional[float] = None
    background_saturation_change: float = 0.0
    background_saturated_after: float = 0.0
    overlap: float = 0.0
    circle_kept: bool = False
    round_region: bool = False

    @property
    def moved(self) -> bool:
        return self.shift is not None and self.shift >= MIN_SHIFT


def hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def mean_hue(image: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """Circular mean hue (degrees) of the pixels in ``mask``, weighted by saturation; None for grey."""
    hue, saturation, _ = hsv(as_unit_rgb(image))
    angles, weights = np.deg2rad(hue[mask]), saturation[mask]
    x, y = float(np.sum(weights * np.cos(angles))), float(np.sum(weights * np.sin(angles)))
    if np.hypot(x, y) <= 1e-6 * max(1, angles.size):
        return None
    return float(np.rad2deg(np.arctan2(y, x)) % 360)


def grown(mask: np.ndarray) -> np.ndarray:
    """The mask with its 8 neighbours added (one pixel of dilation)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.logical_or.reduce([padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def foreground(image: np.ndarray) -> np.ndarray:
    _, saturation, value = hsv(as_unit_rgb(image))
    return (saturation > SATURATION_MIN) & (value > VALUE_MIN)


def unguided_object_mask(image: np.ndarray) -> Optional[np.ndarray]:
    """The pixel mask of the detector's largest object, or None when it finds none."""
    found = detect_object_masks(image)
    return found[0][1] if found else None


def overlap_and_circle(guided: np.ndarray, object_mask: np.ndarray) -> Tuple[float, bool]:
    """The largest IoU of an object the detector finds in ``guided`` with ``object_mask`` (how much of the
    unguided footprint is still one object), and whether a circle overlaps it with IoU >= MIN_IOU."""
    overlaps = [(iou(mask, object_mask), obj.shape) for obj, mask in detect_object_masks(guided)]
    best = max((value for value, _ in overlaps), default=0.0)
    return best, any(shape == "circle" and value >= MIN_IOU for value, shape in overlaps)


def keeps_round_region(guided: np.ndarray, object_mask: np.ndarray) -> bool:
    """Whether the saturated region (any colours) overlapping ``object_mask`` most is a circle there."""
    labels = connected_components(foreground(guided))
    overlaps = np.bincount(labels[object_mask], minlength=labels.max() + 1)[1:]
    if overlaps.size == 0 or overlaps.max() == 0:
        return False
    region = labels == 1 + int(np.argmax(overlaps))
    return iou(region, object_mask) >= MIN_IOU and classify_shape(*shape_features(region)) == "circle"


def read_seed(plain: np.ndarray, guided: np.ndarray, target_hue: float = TARGET_HUE) -> SeedReading:
    """Read ``guided`` on the object and background of ``plain``, the unguided image of the same seed."""
    object_mask = unguided_object_mask(plain)
    if object_mask is None:
        return SeedReading(has_object=False)
    background = ~grown(object_mask)
    saturation_before, saturation_after = hsv(as_unit_rgb(plain))[1], hsv(as_unit_rgb(guided))[1]
    before, after = mean_hue(plain, object_mask), mean_hue(guided, object_mask)
    shift = (hue_distance(before, target_hue) - hue_distance(after, target_hue)
             if before is not None and after is not None else None)
    overlap, circle_kept = overlap_and_circle(guided, object_mask)
    return SeedReading(
        has_object=True, hue_before=before, hue_after=after, shift=shift,
        object_saturation_change=float(saturation_after[object_mask].mean() - saturation_before[object_mask].mean()),
        background_hue_after=mean_hue(guided, background),
        background_saturation_change=float(saturation_after[background].mean() - saturation_before[background].mean()),
        background_saturated_after=float(foreground(guided)[background].mean()),
        overlap=overlap, circle_kept=circle_kept, round_region=keeps_round_region(guided, object_mask))


def _degrees(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_seed(seed: int, reading: SeedReading) -> str:
    if not reading.has_object:
        return f"seed {seed:>3}: no object in the unguided image"
    shift = "-" if reading.shift is None else f"{reading.shift:+.1f}"
    return (f"seed {seed:>3}: object hue {_degrees(reading.hue_before):>3} -> {_degrees(reading.hue_after):>3} deg "
            f"(toward blue {shift:>6} deg, saturation {reading.object_saturation_change:+.2f}) | background hue "
            f"{_degrees(reading.background_hue_after):>3} deg, saturation {reading.background_saturation_change:+.2f}, "
            f"saturated {reading.background_saturated_after:.0%} | object IoU {reading.overlap:.2f} | "
            f"circle kept {reading.circle_kept!s:>5} | "
            f"round region {reading.round_region!s:>5}")


def format_summary(scale: float, readings: List[SeedReading], seconds: float) -> str:
    n = len(readings)
    shifts = [r.shift for r in readings if r.shift is not None]
    count = lambda flags: f"{sum(flags)}/{n}"  # noqa: E731
    mean_shift = f"{np.mean(shifts):+.1f}" if shifts else "-"
    return (f"{scale:>11g} | {count([r.moved for r in readings]):>11} | {mean_shift:>14} | "
            f"{np.mean([r.overlap for r in readings]):>8.2f} | {count([r.circle_kept for r in readings]):>11} | "
            f"{count([r.moved and r.circle_kept for r in readings]):>15} | "
            f"{count([r.round_region for r in readings]):>12} | "
            f"{np.mean([r.background_saturation_change for r in readings]):>+13.2f} | "
            f"{np.mean([r.background_saturated_after for r in readings]):>17.0%} | {seconds:>7.0f}")


SUMMARY_HEADER = (f"{'guide scale':>11} | {'seeds moved':>11} | {'mean shift deg':>14} | {'mean IoU':>8} | "
                  f"{'circle kept':>11} | "
                  f"{'moved and kept':>15} | {'round region':>12} | {'bg sat change':>13} | "
                  f"{'bg saturated after':>17} | {'seconds':>7}")


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
    parser.add_argument("--keep-layout", action="store_true", help="--guide-keep-layout (needs --space latent)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help="a prompt asking for one circle, e.g. 'a circle' (no colour word to pull back against "
                             "the guidance) (default: %(default)s)")
    args = parser.parse_args()
    if "circle" not in args.prompt.split():
        parser.error(f"--prompt must ask for a circle (the detector reads the circle), got {args.prompt!r}")

    pipe = ldm.load("txt2img", device=args.device)
    common = dict(steps=args.steps, seed=args.seed, n=args.seeds)
    plain = [np.asarray(image) for image in pipe(args.prompt, **common)]
    print(f"{args.prompt!r}, {args.seeds} seeds, {args.steps} steps, default sampler and CFG scale; target "
          f"{','.join(map(str, BLUE))} (hue {TARGET_HUE:.0f} deg), --guide-region {args.region} "
          f"--guide-color-space {args.space} --guide-max-step {args.max_step}"
          f"{' --guide-keep-layout' if args.keep_layout else ''}; moved = >= {MIN_SHIFT:g} deg "
          f"toward blue on the unguided object's pixels; circle kept = a detected circle with IoU >= {MIN_IOU:g} "
          f"with the unguided object")
    summaries = []
    for scale in args.scales:
        start = time.perf_counter()
        guided = [np.asarray(image) for image in pipe(args.prompt, guide_color=BLUE, guide_scale=scale,
                                                     guide_region=args.region, guide_color_space=args.space,
                                                     guide_max_step=args.max_step,
                                                     guide_keep_layout=args.keep_layout, **common)]
        seconds = time.perf_counter() - start
        readings = [read_seed(p, g) for p, g in zip(plain, guided)]
        print(f"-- guide scale {scale:g}")
        for offset, reading in enumerate(readings):
            print(format_seed(args.seed + offset, reading))
        summaries.append(format_summary(scale, readings, seconds))
    print(SUMMARY_HEADER)
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
