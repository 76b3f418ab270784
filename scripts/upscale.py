"""x4 upscaling: ``python scripts/upscale.py --init-img small.png --prompt "..."
--config configs/stable-diffusion/x4-upscaling.yaml --ckpt <file>`` (SD x4 upscaler), or
``--init-img small.png --config configs/latent-diffusion/bsr_sr.yaml --ckpt models/ldm/bsr_sr/model.ckpt``
(the latent-diffusion BSR super-resolution model, no prompt). See README.md, "upscale"."""
import argparse

from ldm.inference import runner
from ldm.inference.parsers import build_parser as _build_parser


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("upscale")


def main(argv=None) -> None:
    runner.main("upscale", argv)


if __name__ == "__main__":
    main()
