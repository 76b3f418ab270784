"""Prompt adherence on the shapes world: prompt sets with known answers, scoring of an image
against its prompt with the detector (:mod:`ldm.evaluation.detector`), and tables of accuracies
for seen and held-out colour/shape combinations.

Scoring rules:

* single object: ``colour`` -- the largest detected object has the prompt's colour; ``shape`` --
  it also has the prompt's shape.
* two objects: for each named object, the largest detected object of its colour; ``colour`` --
  the fraction of the two colours found; ``shape`` -- the fraction found with the right shape;
  ``position`` -- both found and their centroids in the prompt's relation
  (:func:`ldm.data.shapes.relation_holds`: along the relation's axis, more than across it).

A prompt is "held-out" when any of its objects is a pair of
:data:`ldm.data.shapes.HELD_OUT_COMBINATIONS`.

Relation sensitivity: a two-object prompt and its mirror (same objects, opposite relation word)
drawn from the same starting noise should come out with the objects swapped; ``same_layout``
says whether they did not (both objects found in both images, and the first-named object on the
same side in both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ldm.data.shapes import COLOURS, RELATIONS, SHAPES, combinations, is_held_out, noun_phrase, relation_holds
from ldm.evaluation.detector import DetectedObject, detect_objects, largest_of_colour


@dataclass(frozen=True)
class PromptCase:
    """A prompt with its answer: one or two (colour, shape) objects and, for two, the relation
    of the first to the second."""
    objects: Tuple[Tuple[str, str], ...]
    relation: Optional[str] = None

    @property
    def text(self) -> str:
        first = noun_phrase(*self.objects[0])
        if len(self.objects) == 1:
            return first
        return f"{first} {self.relation} {noun_phrase(*self.objects[1])}"

    @property
    def held_out(self) -> bool:
        return any(is_held_out(c, s) for c, s in self.objects)

    @property
    def kind(self) -> str:
        return "single" if len(self.objects) == 1 else "two"


def _parse_noun_phrase(words: Sequence[str]) -> Optional[Tuple[str, str]]:
    """("red", "circle") of ["a", "small", "red", "circle"] (size word optional), else None."""
    words = [w for w in words if w not in ("small", "large")]
    if len(words) == 3 and words[0] in ("a", "an") and words[1] in COLOURS and words[2] in SHAPES:
        return words[1], words[2]
    return None


def parse_prompt(text: str) -> Optional[PromptCase]:
    """The case a shapes-world caption asks for ("a red circle", "a small blue star", "a red circle
    to the left of a green square"), or None when the text is not such a caption."""
    text = " ".join(text.lower().split())
    for relation in RELATIONS:
        first, sep, second = text.partition(f" {relation} ")
        if sep:
            objects = (_parse_noun_phrase(first.split()), _parse_noun_phrase(second.split()))
            return PromptCase(objects, relation) if None not in objects else None
    single = _parse_noun_phrase(text.split())
    return PromptCase((single,)) if single else None


def single_object_cases(repeats: int = 1) -> List[PromptCase]:
    """Every (colour, shape) pair ``repeats`` times: 24 pairs, 4 of them held out."""
    return [PromptCase((pair,)) for _ in range(repeats) for pair in combinations()]


def two_object_cases(count: int, held_out: bool, seed: int = 0) -> List[PromptCase]:
    """``count`` random two-object prompts with different colours, relations in turn; with
    ``held_out`` each has at least one held-out pair, else none."""
    rng = np.random.default_rng([seed, int(held_out)])
    colours, cases = list(COLOURS), []
    while len(cases) < count:
        first = (colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
        second = (colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))])
        case = PromptCase((first, second), RELATIONS[len(cases) % len(RELATIONS)])
        if first[0] != second[0] and case.held_out == held_out:
            cases.append(case)
    return cases


OPPOSITE_RELATIONS = {"above": "below", "below": "above",
                      "to the left of": "to the right of", "to the right of": "to the left of"}


def mirrored(case: PromptCase) -> PromptCase:
    """The same two objects in the opposite relation ("above" <-> "below", "left" <-> "right")."""
    if case.kind != "two":
        raise ValueError("only two-object prompts have a mirror")
    return PromptCase(case.objects, OPPOSITE_RELATIONS[case.relation])


@dataclass(frozen=True)
class Score:
    """Accuracies of one image for its prompt (position is None for one object)."""
    colour: float
    shape: float
    position: Optional[float]

    @property
    def all_correct(self) -> bool:
        return self.colour == 1.0 and self.shape == 1.0 and self.position in (None, 1.0)


def score_detections(case: PromptCase, objects: Sequence[DetectedObject]) -> Score:
    """Score what the detector found in an image against the prompt (rules in the module doc)."""
    if case.kind == "single":
        (colour, shape), = case.objects
        top = objects[0] if objects else None
        colour_ok = top is not None and top.colour == colour
        return Score(float(colour_ok), float(colour_ok and top.shape == shape), None)
    found = [largest_of_colour(list(objects), colour) for colour, _ in case.objects]
    colour = np.mean([f is not None for f in found])
    shape = np.mean([f is not None and f.shape == s for f, (_, s) in zip(found, case.objects)])
    position = all(f is not None for f in found) and relation_holds(
        case.relation, (found[0].cx, found[0].cy), (found[1].cx, found[1].cy))
    return Score(float(colour), float(shape), float(position))


def _first_minus_second(case: PromptCase, objects: Sequence[DetectedObject]) -> Optional[float]:
    """Offset of the first-named object from the second along the relation's axis, or None
    when either is not found."""
    found = [largest_of_colour(list(objects), colour) for colour, _ in case.objects]
    if any(f is None for f in found):
        return None
    if case.relation in ("above", "below"):
        return found[0].cy - found[1].cy
    return found[0].cx - found[1].cx


def same_layout(case: PromptCase, objects: Sequence[DetectedObject],
                mirror_objects: Sequence[DetectedObject]) -> Optional[bool]:
    """Whether the image of ``case`` and that of its mirror put the first-named object on the
    same side of the second (None when an object is missing from either image)."""
    offsets = (_first_minus_second(case, objects), _first_minus_second(case, mirror_objects))
    if None in offsets:
        return None
    return (offsets[0] < 0) == (offsets[1] < 0)


def score_image(case: PromptCase, image: np.ndarray) -> Score:
    return score_detections(case, detect_objects(image))


@dataclass(frozen=True)
class Row:
    """One line of an accuracy table."""
    group: str
    count: int
    colour: float
    shape: float
    position: Optional[float]
    all_correct: float


def summarize(cases: Sequence[PromptCase], scores: Sequence[Score]) -> List[Row]:
    """Mean accuracies per (single/two objects) x (seen/held-out) group, in that order."""
    rows = []
    for kind in ("single", "two"):
        for held_out in (False, True):
            picked = [s for c, s in zip(cases, scores) if c.kind == kind and c.held_out == held_out]
            if not picked:
                continue
            positions = [s.position for s in picked if s.position is not None]
            rows.append(Row(f"{kind}-object, {'held-out' if held_out else 'seen'}", len(picked),
                            float(np.mean([s.colour for s in picked])), float(np.mean([s.shape for s in picked])),
                            float(np.mean(positions)) if positions else None,
                            float(np.mean([s.all_correct for s in picked]))))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of accuracies in percent."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = ["| prompts | n | colour | shape | position | all correct |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.group} | {r.count} | {pct(r.colour)} | {pct(r.shape)} | {pct(r.position)} | "
              f"{pct(r.all_correct)} |" for r in rows]
    return "\n".join(lines)


def psnr(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (over the pixels where ``mask``
    (H, W) is true, when given)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    error = (a - b) ** 2
    if mask is not None:
        error = error[np.asarray(mask, dtype=bool)]
    mse = float(error.mean()) if error.size else 0.0
    return float("inf") if mse == 0.0 else 10.0 * np.log10(1.0 / mse)


def mean_accuracies(scores: Sequence[Score]) -> Dict[str, float]:
    """Colour, shape (and position, where scored) accuracy over ``scores``."""
    out = {"colour": float(np.mean([s.colour for s in scores])), "shape": float(np.mean([s.shape for s in scores]))}
    positions = [s.position for s in scores if s.position is not None]
    if positions:
        out["position"] = float(np.mean(positions))
    return out
