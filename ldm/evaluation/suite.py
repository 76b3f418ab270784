"""The metrics of ``scripts/evaluate.py`` computed on image sets and gathered into one flat dict
of numbers, printed as one table: FID, KID, IS and precision/recall on FID Inception features
(:mod:`ldm.evaluation.fidelity`), the CLIP score (:mod:`ldm.evaluation.clip_score`) and the
shapes-world adherence of the detector (:mod:`ldm.evaluation.adherence`).

Conventions: the first set is the generated one, the second the reference (real) one. IS, CLIP
and shapes scores are of the generated set; image i goes with prompt i.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ldm.evaluation import fidelity
from ldm.evaluation.adherence import parse_prompt, score_image
from ldm.evaluation.image_sets import ImageSet
from ldm.evaluation.inception import FIDInceptionV3, inception_outputs
from ldm.inference.errors import UsageError

INCEPTION_METRICS = ("fid", "kid", "is", "pr")
METRICS = (*INCEPTION_METRICS, "clip", "shapes")
PAIR_METRICS = ("fid", "kid", "pr")          # compare the generated set with the reference
FEATURE_METRICS = ("kid", "is", "pr")        # need the images, not only their statistics
Input = Union[ImageSet, fidelity.GaussianStats]


@dataclass
class InceptionOutputs:
    """What one set gives: its FID statistics and, for images, features and logits."""
    stats: fidelity.GaussianStats
    features: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None


def check_metrics(metrics: Sequence[str], generated: Input, reference: Optional[Input]) -> None:
    """UsageError when a metric lacks what it needs (a reference, images rather than statistics)."""
    for metric in metrics:
        if metric not in METRICS:
            raise UsageError(f"--metrics: unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        if metric in PAIR_METRICS and reference is None:
            raise UsageError(f"{metric} compares two sets: pass a reference folder, .npz or statistics file too")
        sets = (generated, reference) if metric in PAIR_METRICS else (generated,)
        if metric in FEATURE_METRICS and any(isinstance(s, fidelity.GaussianStats) for s in sets):
            raise UsageError(f"{metric} needs images, not a statistics file (which serves FID only)")
        if metric in ("clip", "shapes") and isinstance(generated, fidelity.GaussianStats):
            raise UsageError(f"{metric} needs the generated images, not a statistics file")


def default_metrics(generated: Input, reference: Optional[Input], clip: bool) -> List[str]:
    """Every Inception metric the inputs allow (with a reference: FID, KID, IS, precision/recall),
    and the CLIP score when a CLIP model is given."""
    candidates = [m for m in INCEPTION_METRICS if reference is not None or m not in PAIR_METRICS]
    chosen = []
    for metric in candidates + (["clip"] if clip else []):
        try:
            check_metrics([metric], generated, reference)
        except UsageError:
            continue
        chosen.append(metric)
    return chosen


def inception_outputs_of(model: Optional[FIDInceptionV3], data: Input, batch_size: int, device: str,
                         desc: str) -> InceptionOutputs:
    if isinstance(data, fidelity.GaussianStats):
        return InceptionOutputs(data)
    features, logits = inception_outputs(model, data.batches(batch_size), len(data), desc, device)
    return InceptionOutputs(fidelity.GaussianStats.of(features), features, logits)


def inception_metrics(metrics: Sequence[str], generated: InceptionOutputs, reference: Optional[InceptionOutputs],
                      kid_subsets: int = fidelity.KID_SUBSETS, kid_subset_size: int = fidelity.KID_SUBSET_SIZE,
                      splits: int = fidelity.IS_SPLITS, k: int = fidelity.PR_NEIGHBOURS) -> Dict[str, float]:
    """The requested Inception metrics of the generated set (against the reference)."""
    results: Dict[str, float] = {}
    try:
        if "fid" in metrics:
            results["fid"] = fidelity.frechet_distance(generated.stats, reference.stats)
        if "kid" in metrics:
            mean, std, size = fidelity.kernel_inception_distance(reference.features, generated.features,
                                                                 kid_subsets, kid_subset_size)
            results.update(kid_mean=mean, kid_std=std, kid_subset_size=size)
        if "is" in metrics:
            results["is_mean"], results["is_std"] = fidelity.inception_score(generated.logits, splits)
        if "pr" in metrics:
            results["precision"], results["recall"] = fidelity.precision_recall(reference.features,
                                                                                generated.features, k)
            results["pr_k"] = k
    except ValueError as err:
        raise UsageError(str(err)) from err
    return results


def read_prompts(path: str, count: int) -> List[str]:
    """One prompt per non-blank line, exactly one per image."""
    try:
        with open(path, encoding="utf-8") as handle:
            prompts = [line.strip() for line in handle if line.strip()]
    except OSError as err:
        raise UsageError(f"--prompts {path}: cannot read it ({err.strerror})") from err
    if len(prompts) != count:
        raise UsageError(f"--prompts {path} has {len(prompts)} prompts for {count} images: give one per image, "
                         "in the images' order")
    return prompts


def shapes_metrics(images: ImageSet, prompts: Sequence[str], batch_size: int) -> Dict[str, float]:
    """Colour, shape, position and all-correct accuracy of the detector's reading of each image
    against its shapes-world prompt (scoring rules of :mod:`ldm.evaluation.adherence`)."""
    cases = [parse_prompt(p) for p in prompts]
    unreadable = [p for p, c in zip(prompts, cases) if c is None]
    if unreadable:
        raise UsageError(f"shapes scores need shapes-world captions ('a red circle above a blue star'); "
                         f"not one: {unreadable[0]!r}")
    scores = [score_image(case, image) for case, image in zip(cases, _images(images, batch_size))]
    results = {"shapes_colour": float(np.mean([s.colour for s in scores])),
               "shapes_shape": float(np.mean([s.shape for s in scores]))}
    positions = [s.position for s in scores if s.position is not None]
    if positions:
        results["shapes_position"] = float(np.mean(positions))
    results["shapes_all_correct"] = float(np.mean([s.all_correct for s in scores]))
    return results


def _images(images: ImageSet, batch_size: int):
    for batch in images.batches(batch_size):
        yield from batch


LABELS = {
    "fid": "FID", "kid_mean": "KID (mean)", "kid_std": "KID (std)", "kid_subset_size": "KID subset size",
    "is_mean": "Inception Score (mean)", "is_std": "Inception Score (std)",
    "precision": "precision", "recall": "recall", "pr_k": "precision/recall k",
    "clip_score": "CLIP score",
    "shapes_colour": "shapes: colour accuracy", "shapes_shape": "shapes: shape accuracy",
    "shapes_position": "shapes: position accuracy", "shapes_all_correct": "shapes: all correct",
}


def format_table(results: Dict[str, float]) -> str:
    """A Markdown table of metric and value; accuracies in percent, KID to 6 decimals."""
    lines = ["| metric | value |", "|---|---|"]
    for key, value in results.items():
        if key.startswith("shapes_"):
            shown = f"{100 * value:.1f}%"
        elif key.startswith("kid_") and key != "kid_subset_size":
            shown = f"{value:.6f}"
        elif isinstance(value, int):
            shown = str(value)
        else:
            shown = f"{value:.4f}"
        lines.append(f"| {LABELS.get(key, key)} | {shown} |")
    return "\n".join(lines)
