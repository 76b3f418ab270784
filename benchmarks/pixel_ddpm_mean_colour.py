"""Does a pixel-space DDPM know the mean colour of the image it denoises? The diagnostic behind the
shapes pixel DDPM's move from eps- to v-prediction (docs/SHAPES.md, "Pixel-space DDPM").

A sample's mean colour (the spatial mean, per channel, of x0) is decided at the noisiest steps. There
the model's clean-image estimate is ``x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a)`` (Ho et al. 2020,
eq. 4 solved for x0), so the spatial mean of the predicted noise must match the true noise's mean
(about 1 / sqrt(H * W) of a pixel's noise) or the error is multiplied by ``sqrt(1 - a) / sqrt(a)``
(30x at t = 990 of the linear schedule). For each timestep this prints, on renders of the test
split noised with a fixed generator:

- the mean |error| of the estimate's mean colour, the model's and the "trivial" one that takes the
  mean of ``x_t / sqrt(a)`` (what a model that predicts noise with zero spatial mean gets);
- the spread (std over images and channels) of the estimate's mean colour against the data's: a
  spread above the data's is what ancestral and DDIM sampling turn into saturated backgrounds.

    python benchmarks/pixel_ddpm_mean_colour.py --config A.yaml --ckpt A.safetensors [--config B.yaml --ckpt B.st]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TIMESTEPS = (300, 500, 700, 800, 900, 950, 990)


def renders(count: int, size: int) -> torch.Tensor:
    """``count`` single-object renders of the test split in [-1, 1], NCHW."""
    from ldm.data.shapes import ShapesDataset

    data = ShapesDataset(length=count, size=size, seed=1, split="test", two_object_p=0.0)
    return torch.stack([torch.as_tensor(data[i]["image"]) for i in range(count)]).permute(0, 3, 1, 2).float()


def mean_colour_table(model, x0: torch.Tensor, seed: int = 0) -> str:
    """One markdown row per timestep: the estimate's mean-colour error and spread (see the module doc)."""
    generator = torch.Generator().manual_seed(seed)
    data_spread = x0.mean((2, 3)).std().item()
    rows = ["| t | alpha_bar | mean-colour error, model | trivial | spread, model | spread, data |",
            "|---|---|---|---|---|---|"]
    for step in TIMESTEPS:
        t = torch.full((x0.shape[0],), step)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = model.q_sample(x0, t, noise)
        with torch.no_grad():
            x0_hat = model.predict_start_from_z_and_v(x_t, t, model.model(x_t, t)) \
                if model.parameterization == "v" else model.predict_start_from_noise(x_t, t, model.model(x_t, t))
        alpha_bar = model.alphas_cumprod[step]
        truth = x0.mean((2, 3))
        model_error = (x0_hat.mean((2, 3)) - truth).abs().mean().item()
        trivial_error = (x_t.mean((2, 3)) / alpha_bar.sqrt() - truth).abs().mean().item()
        spread = x0_hat.mean((2, 3)).std().item()
        rows.append(f"| {step} | {alpha_bar:.2e} | {model_error:.3f} | {trivial_error:.3f} | {spread:.3f} | "
                    f"{data_spread:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, help="model config (repeat per model)")
    parser.add_argument("--ckpt", action="append", required=True, help="weights (repeat per model)")
    parser.add_argument("--count", type=int, default=64, help="renders (default 64)")
    opt = parser.parse_args()
    if len(opt.config) != len(opt.ckpt):
        parser.error("give one --ckpt per --config")
    import ldm

    for config, ckpt in zip(opt.config, opt.ckpt):
        model = ldm.load("unconditional", config=config, ckpt=ckpt, device="cpu", precision="full").model
        x0 = renders(opt.count, model.image_size)
        print(f"\n{ckpt} ({model.parameterization}-prediction)\n")
        print(mean_colour_table(model, x0))


if __name__ == "__main__":
    main()
