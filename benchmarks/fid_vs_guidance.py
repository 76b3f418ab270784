"""FID and CLIP score across classifier-free guidance scales: the Stable Diffusion papers' trade-off
plot, one row per scale, for a text-to-image model and a prompts file.

Every prompt is rendered once per scale with the same seeds (image k seeded ``--seed + k``), through
``ldm.load("txt2img")``. Per scale: FID against ``--reference`` (an image folder, samples ``.npz`` or
statistics ``.npz``; Inception weights from ``--inception``), the CLIP score against the prompts
(``--clip``, a transformers CLIPModel folder), and, when every prompt is a shapes-world caption, the
detector's colour/shape/position/all-correct accuracy. What cannot run (no Inception file, no CLIP
folder) is said once and left out; the rest still runs.

Defaults: the shipped shapes model (checkpoints/shapes-txt2img.*), the shapes txt2img prompt set
(every colour/shape pair once and ``--two-count`` seen and held-out two-object prompts), and as reference
the shapes world itself: ground-truth renders of the same prompts at other placements.

    python benchmarks/fid_vs_guidance.py [--scales 1 2 3 5 7.5] [--prompts FILE] [--reference PATH]
        [--inception checkpoints/pt_inception-2015-12-05-6726825d.pth] [--clip DIR] [--steps 20] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import ldm  # noqa: E402
from ldm.evaluation import generation, suite  # noqa: E402
from ldm.evaluation.adherence import parse_prompt  # noqa: E402
from ldm.evaluation.benchmarks import ground_truth_render, prompt_cases  # noqa: E402
from ldm.evaluation.fidelity import GaussianStats, frechet_distance  # noqa: E402
from ldm.evaluation.image_sets import open_input  # noqa: E402
from ldm.evaluation.inception import load_fid_inception, missing_weights_message  # noqa: E402
from ldm.util.paths import in_cwd_or_repository  # noqa: E402

SHIPPED = "checkpoints/shapes-txt2img"
DEFAULT_INCEPTION = "checkpoints/pt_inception-2015-12-05-6726825d.pth"
REFERENCE_SEED_OFFSET = 100_000   # ground-truth placements independent of the sampling seeds


class InMemory:
    """uint8 (N, H, W, 3) images with the ``batches`` interface of ``ldm.evaluation.image_sets``."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, size: int):
        for start in range(0, len(self.images), size):
            yield self.images[start:start + size]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=f"{SHIPPED}.yaml", help="model config (default: %(default)s)")
    parser.add_argument("--ckpt", default=f"{SHIPPED}.safetensors", help="model weights (default: %(default)s)")
    parser.add_argument("--prompts", help="prompts file, one per line (default: the shapes txt2img prompt set)")
    parser.add_argument("--two-count", type=int, default=12,
                        help="default prompt set: seen and held-out two-object prompts, each (default: 12)")
    parser.add_argument("--reference", help="reference images or statistics for FID (default with the shapes "
                                            "prompt set: ground-truth renders of the prompts)")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 7.5],
                        help="guidance scales (default: 1 2 3 5 7.5)")
    parser.add_argument("--inception", default=DEFAULT_INCEPTION, help="pytorch-fid's Inception weights")
    parser.add_argument("--clip", help="transformers CLIPModel folder for the CLIP score")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the rows to this new JSON file")
    return parser


def shapes_prompt_set(two_count: int, seed: int) -> List[str]:
    return [case.text for case in prompt_cases(1, two_count, seed)]


def shapes_reference(prompts: List[str], seed: int) -> np.ndarray:
    """Ground-truth renders of the prompts, at placements the sampling seeds do not share."""
    renders = [ground_truth_render(parse_prompt(p), seed + REFERENCE_SEED_OFFSET + i) for i, p in enumerate(prompts)]
    return np.stack([(r * 255).round().astype(np.uint8) for r in renders])


def inception_or_reason(path: str, device: str):
    """(model, None) or (None, why FID is left out)."""
    path = in_cwd_or_repository(path)
    if not os.path.isfile(path):
        return None, missing_weights_message(path)
    return load_fid_inception(path, device), None


def row_for_scale(images: np.ndarray, prompts: List[str], opt, inception, reference_stats: Optional[GaussianStats],
                  scorer, shapes: bool) -> Dict[str, float]:
    row: Dict[str, float] = {}
    generated = InMemory(images)
    if inception is not None and reference_stats is not None:
        outputs = suite.inception_outputs_of(inception, generated, opt.batch_size, opt.device, "generated")
        row["fid"] = frechet_distance(outputs.stats, reference_stats)
    if scorer is not None:
        from ldm.evaluation.clip_score import clip_score
        row["clip_score"] = clip_score(scorer.image_scores(generated.batches(opt.batch_size), prompts, len(prompts)))
    if shapes:
        row.update(suite.shapes_metrics(generated, prompts, opt.batch_size))
    return row


def print_rows(rows: List[Dict[str, float]]) -> None:
    keys = [k for k in rows[0] if k != "scale"]
    print("| scale | " + " | ".join(suite.LABELS.get(k, k) for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        cells = [f"{100 * row[k]:.1f}%" if k.startswith("shapes_") else f"{row[k]:.3f}" for k in keys]
        print(f"| {row['scale']:g} | " + " | ".join(cells) + " |")


def main() -> None:
    opt = build_parser().parse_args()
    if opt.json and os.path.exists(opt.json):
        sys.exit(f"fid_vs_guidance.py: error: --json {opt.json} exists; choose a new file name")
    if opt.prompts:
        prompts = [line.strip() for line in Path(opt.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = shapes_prompt_set(opt.two_count, opt.seed)
    shapes = all(parse_prompt(p) is not None for p in prompts)
    inception, reason = inception_or_reason(opt.inception, opt.device)
    if reason:
        print(f"FID left out: {reason}")
    reference_stats = None
    if inception is not None:
        if opt.reference:
            reference = open_input(opt.reference)
        elif shapes:
            reference = InMemory(shapes_reference(prompts, opt.seed))
        else:
            reference = None
            print("FID left out: no --reference for a prompts file that is not shapes-world captions")
        if reference is not None:
            reference_stats = suite.inception_outputs_of(inception, reference, opt.batch_size, opt.device,
                                                         "reference").stats
    scorer = None
    if opt.clip:
        from ldm.evaluation.clip_score import ClipScorer
        scorer = ClipScorer(opt.clip, opt.device)
    else:
        print("CLIP score left out: no --clip folder (a transformers CLIPModel saved with its processor)")
    pipe = ldm.load("txt2img", ckpt=opt.ckpt, config=opt.config, device=opt.device)
    print(f"{len(prompts)} prompts, sampler {opt.sampler}, {opt.steps} steps, seed {opt.seed}")
    rows = []
    for scale in opt.scales:
        started = time.time()
        images = generation.txt2img(pipe, prompts, opt.seed, opt.steps, scale, opt.batch_size, opt.sampler)
        rows.append({"scale": scale, **row_for_scale(images, prompts, opt, inception, reference_stats, scorer,
                                                     shapes)})
        print(f"scale {scale:g}: {time.time() - started:.0f} s", file=sys.stderr)
    print_rows(rows)
    if opt.json:
        with open(opt.json, "x", encoding="utf-8") as handle:
            json.dump({"prompts": len(prompts), "steps": opt.steps, "sampler": opt.sampler, "rows": rows}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
