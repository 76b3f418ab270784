"""Reading the state-dict manifests of the original code (copied from shared/reference/manifests)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch

MANIFEST_DIR = Path(__file__).parent / "reference_manifests"

# manifest name -> config path (relative to the repository root)
MANIFEST_CONFIGS = {
    "v1-inference": "configs/stable-diffusion/v1-inference.yaml",
    "v2-inference": "configs/stable-diffusion/v2-inference.yaml",
    "v2-inference-v": "configs/stable-diffusion/v2-inference-v.yaml",
    "v2-inpainting-inference": "configs/stable-diffusion/v2-inpainting-inference.yaml",
    "v2-midas-inference": "configs/stable-diffusion/v2-midas-inference.yaml",
    "x4-upscaling": "configs/stable-diffusion/x4-upscaling.yaml",
    "v2-1-stable-unclip-h-inference": "configs/stable-diffusion/v2-1-stable-unclip-h-inference.yaml",
    "v2-1-stable-unclip-l-inference": "configs/stable-diffusion/v2-1-stable-unclip-l-inference.yaml",
}

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_manifest(name: str, prefix: str = "") -> List[Tuple[str, Tuple[int, ...]]]:
    """(key, shape) pairs of a manifest in state-dict order, keeping keys under ``prefix``
    (with the prefix stripped)."""
    entries = []
    path = MANIFEST_DIR / f"{name}.txt"
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")
        if not key.startswith(prefix):
            continue
        dims = () if shape == "()" else tuple(int(d) for d in shape.split("x"))
        entries.append((key[len(prefix):], dims))
    return entries


def layout_of(module: torch.nn.Module, prefix: str = "") -> List[Tuple[str, Tuple[int, ...]]]:
    """(key, shape) pairs of ``module.state_dict()`` under ``prefix``, prefix stripped."""
    return [(k[len(prefix):], tuple(v.shape)) for k, v in module.state_dict().items()
            if k.startswith(prefix)]
