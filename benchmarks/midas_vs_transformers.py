"""Our MiDaS DPT models against transformers' ``DPTForDepthEstimation`` at their real sizes
(DPT-Hybrid: ViT-B/16 + ResNet-50 at 384; DPT-Large: ViT-L/16 at 384) on the same tensors:
random seeded weights (every tensor moved by noise, so no layer is trivially zero), renamed with
``ldm.modules.midas.transformers_dpt``; reports the largest absolute difference of the depth
outputs, relative to their scale, and the time of one forward pass of each.

    python benchmarks/midas_vs_transformers.py
    python benchmarks/midas_vs_transformers.py --models dpt_hybrid --size 384 --batch 2 --device cuda

Needs transformers (the ``test`` extra); fp32 (``--dtype float64`` to separate rounding from real
differences). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ldm.modules.midas.midas.dpt_depth import DPTDepthModel  # noqa: E402
from ldm.modules.midas.transformers_dpt import to_transformers_dpt, transformers_dpt_config  # noqa: E402

BACKBONES = {"dpt_hybrid": "vitb_rn50_384", "dpt_large": "vitl16_384"}


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def compare(model_type: str, size: int, batch: int, device: torch.device, dtype: torch.dtype = torch.float32,
            seed: int = 0) -> dict:
    from transformers import DPTForDepthEstimation

    torch.manual_seed(seed)
    ours = DPTDepthModel(backbone=BACKBONES[model_type], non_negative=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in ours.parameters():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.02)
    theirs = DPTForDepthEstimation(transformers_dpt_config(ours))
    theirs.load_state_dict(to_transformers_dpt(ours.state_dict(), hybrid=model_type == "dpt_hybrid"), strict=True)
    ours, theirs = ours.to(device, dtype).eval(), theirs.to(device, dtype).eval()
    x = torch.randn(batch, 3, size, size, generator=generator).clamp(-1, 1).to(device, dtype)
    with torch.no_grad():
        ours(x), theirs(pixel_values=x)  # warm-up
        depth, t_ours = _timed(lambda: ours(x), device)
        reference, t_theirs = _timed(lambda: theirs(pixel_values=x).predicted_depth, device)
    difference = (depth - reference).abs().max().item()
    scale = reference.abs().max().item()
    return {"model": model_type, "size": size, "batch": batch, "device": str(device), "dtype": str(dtype)[6:],
            "max_abs_diff": difference, "max_abs_output": scale, "relative": difference / max(scale, 1e-30),
            "ours_s": t_ours, "transformers_s": t_theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["dpt_hybrid", "dpt_large"], choices=sorted(BACKBONES))
    parser.add_argument("--size", type=int, default=384, help="input side (a multiple of 32; transformers' "
                        "hybrid embeddings accept only their configured 384)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                        help="float64: the difference left is the implementations', not float32 rounding")
    args = parser.parse_args()
    for model_type in args.models:
        r = compare(model_type, args.size, args.batch, torch.device(args.device), getattr(torch, args.dtype))
        print(f"{r['model']:>10} {r['size']}x{r['size']} batch {r['batch']} {r['dtype']} on {r['device']}: "
              f"max |ours - transformers| = {r['max_abs_diff']:.3e} "
              f"(outputs up to {r['max_abs_output']:.3e}, relative {r['relative']:.2e}); "
              f"forward {r['ours_s']:.2f} s ours, {r['transformers_s']:.2f} s transformers", flush=True)


if __name__ == "__main__":
    main()
